//! A small HTTP client for talking to agents: one request per connection, bounded response sizes,
//! timeouts, clear errors.
//!
//! Agents serve their external API over TLS with a self-signed key that their evidence binds
//! (docs/evidence.md). So the certificate is not checked against any CA: instead every response
//! reports the SHA-256 of the server's key (SubjectPublicKeyInfo), `verify --host` requires the
//! evidence to bind it, and a request can be pinned to a key, refusing before anything (such as a
//! bearer token) is sent when the server presents another.

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// An agent's base URL from `HOST`, `HOST:PORT`, `https://HOST:PORT` or `http://HOST:PORT`
/// (plain HTTP only when asked for: agents serve TLS by default).
pub fn base_url(host: &str, default_port: u16) -> Result<String> {
    let host = host.trim_end_matches('/');
    let (scheme, bare) = match host.split_once("://") {
        Some(("https", rest)) => ("https", rest),
        Some(("http", rest)) => ("http", rest),
        Some((other, _)) => bail!("{host}: unsupported scheme {other:?} (https or http)"),
        None => ("https", host),
    };
    if bare.is_empty() || bare.contains('/') {
        bail!("{host:?} is not HOST[:PORT]");
    }
    let with_port = if bare
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !bare.ends_with(']')
    {
        bare.to_owned()
    } else {
        format!("{bare}:{default_port}")
    };
    Ok(format!("{scheme}://{with_port}"))
}

/// An answer, with the SHA-256 of the server's TLS key (SPKI DER) when it came over TLS.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub tls_key: Option<[u8; 32]>,
    /// Response headers, names lower-cased (e.g. `retry-after`, issuer chains of Intel's PCS).
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the server of a request is authenticated over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Agents: any key, reported (and pinned when given), see the module doc.
    AnyKey(Option<[u8; 32]>),
    /// Public services (AMD KDS, Intel PCS): the system's CA store and the host name.
    SystemCa,
}

/// One request with no pinned key.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    limit: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let response = request(method, url, headers, body, limit, timeout, None).await?;
    Ok((response.status, response.body))
}

/// One request; with `pin`, only to a TLS server whose key hashes to it. The response body must
/// fit `limit` bytes.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    limit: usize,
    timeout: Duration,
    pin: Option<[u8; 32]>,
) -> Result<Response> {
    request_with(method, url, headers, body, limit, timeout, Tls::AnyKey(pin)).await
}

/// One request whose server is authenticated as `trust` says.
pub async fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    limit: usize,
    timeout: Duration,
    trust: Tls,
) -> Result<Response> {
    let pin = match trust {
        Tls::AnyKey(pin) => pin,
        Tls::SystemCa => None,
    };
    let uri: hyper::Uri = url.parse().with_context(|| format!("URL {url:?}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if pin.is_none() => false,
        Some("http") => bail!("{url}: a pinned TLS key needs https"),
        _ => bail!("{url}: not an http(s) URL"),
    };
    let host = uri.host().context("URL without host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = format!("{host}:{port}");
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", &authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building a request to {url}"))?;

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            let (status, headers, body) = exchange(tcp, request, limit).await?;
            return Ok(Response {
                status,
                body,
                tls_key: None,
                headers,
            });
        }
        let (stream, key) = tls_connect(tcp, &host, trust == Tls::SystemCa).await?;
        if let Some(pinned) = pin {
            if key != pinned {
                bail!(
                    "{authority} presented TLS key {} but {} was verified: refusing to send",
                    hex::encode(key),
                    hex::encode(pinned)
                );
            }
        }
        let (status, headers, body) = exchange(stream, request, limit).await?;
        Ok(Response {
            status,
            body,
            tls_key: Some(key),
            headers,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{url}: no complete answer within {timeout:?}"))?
        .with_context(|| format!("{method} {url}"))
}

/// Polls `url` every 2 s until it answers 200 (true), or `still_waiting` fails, or `limit`
/// passes (false). `still_waiting` gets the seconds waited so far, to check on the VM or show
/// progress.
pub fn wait_for_ok(
    url: &str,
    limit: Duration,
    mut still_waiting: impl FnMut(u64) -> Result<()>,
) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    loop {
        let answer = runtime.block_on(send(
            "GET",
            url,
            &[],
            Vec::new(),
            1 << 16,
            Duration::from_secs(5),
        ));
        if matches!(answer, Ok((200, _))) {
            return Ok(true);
        }
        if started.elapsed() >= limit {
            return Ok(false);
        }
        still_waiting(started.elapsed().as_secs())?;
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// TLS 1.3 without CA verification (see the module doc), or TLS 1.2+ checked against the system's
/// CAs and the host name (`system_ca`, for public services); the stream and the server key's hash.
async fn tls_connect(
    tcp: tokio::net::TcpStream,
    host: &str,
    system_ca: bool,
) -> Result<(tokio_openssl::SslStream<tokio::net::TcpStream>, [u8; 32])> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let mut connector = SslConnector::builder(SslMethod::tls_client())?;
    if system_ca {
        connector.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    } else {
        connector.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        connector.set_verify(SslVerifyMode::NONE);
    }
    let ssl = connector
        .build()
        .configure()?
        .verify_hostname(system_ca)
        .into_ssl(host)?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp)?;
    Pin::new(&mut stream)
        .connect()
        .await
        .context("TLS handshake (does the agent serve TLS? use http:// for one that does not)")?;
    let spki = stream
        .ssl()
        .peer_certificate()
        .context("the server sent no certificate")?
        .public_key()?
        .public_key_to_der()?;
    Ok((stream, Sha256::digest(spki).into()))
}

/// HTTP/1.1 over an established connection.
async fn exchange<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the response: {e} (limit {limit} bytes)"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("10.0.0.1", 8000).unwrap(), "https://10.0.0.1:8000");
        assert_eq!(
            base_url("localhost:18000", 8000).unwrap(),
            "https://localhost:18000"
        );
        assert_eq!(
            base_url("http://vm.example:9/", 8000).unwrap(),
            "http://vm.example:9"
        );
        assert_eq!(base_url("https://vm", 8000).unwrap(), "https://vm:8000");
        assert!(base_url("ftp://vm", 8000).is_err());
        assert!(base_url("vm/path", 8000).is_err());
    }
}

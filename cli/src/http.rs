//! A small HTTP client for talking to agents: bounded response sizes, timeouts, clear errors.

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// An agent's base URL from `HOST`, `HOST:PORT` or `http://HOST:PORT`.
pub fn base_url(host: &str, default_port: u16) -> Result<String> {
    let host = host.trim_end_matches('/');
    if host.starts_with("https://") {
        bail!("{host}: the agent serves plain HTTP; evidence is verified end to end, not by TLS");
    }
    let bare = host.strip_prefix("http://").unwrap_or(host);
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
    Ok(format!("http://{with_port}"))
}

/// One request; the response body must fit `limit` bytes.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    limit: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building a request to {url}"))?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {timeout:?}"))?
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(timeout, Limited::new(response.into_body(), limit).collect())
        .await
        .map_err(|_| anyhow!("{url}: the response did not finish within {timeout:?}"))?
        .map_err(|e| anyhow!("{url}: reading the response: {e} (limit {limit} bytes)"))?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("10.0.0.1", 8000).unwrap(), "http://10.0.0.1:8000");
        assert_eq!(
            base_url("localhost:18000", 8000).unwrap(),
            "http://localhost:18000"
        );
        assert_eq!(
            base_url("http://vm.example:9/", 8000).unwrap(),
            "http://vm.example:9"
        );
        assert!(base_url("https://vm", 8000).is_err());
        assert!(base_url("vm/path", 8000).is_err());
    }
}

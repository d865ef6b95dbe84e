//! A local stand-in for AMD KDS and Intel PCS/PCCS (TEST-ONLY: the real services cannot run
//! here). It serves the REAL collateral in ../shared/vectors at the real services' paths, with
//! their status codes and headers (Intel's issuer chains URL-encoded in
//! `TCB-Info-Issuer-Chain`, `SGX-Enclave-Identity-Issuer-Chain`, `SGX-PCK-CRL-Issuer-Chain`),
//! counts requests, and can be told to answer 429 with `Retry-After`, to truncate a body, or to
//! answer slowly.
//!
//! Served: TDX TCB info for the FMSPC of `tdx/tdx_quote` (404 for any other), the TDX QE
//! identity, the platform PCK CRL and the root CA CRL (PCCS paths), VCEKs for the chips of
//! `virtee-sev/report_milan.hex` and `trustee/snp-test-report.bin`, the Milan, Genoa and
//! Turin ASK/ARK chains, and the Milan and Genoa ASVK/ARK chains (`/vlek/v1/{product}/cert_chain`,
//! ASVK first as KDS serves them). No AMD CRL: none is in the vectors (those paths answer 404).
//! VLEKs themselves are not on KDS, nor here. [`CollateralServer::answer`] adds or replaces a
//! route, e.g. to serve a TEST-ONLY signer's VCEK and chain where KDS serves AMD's.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One canned answer.
#[derive(Clone)]
struct Answer {
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// What the server was told to do differently.
#[derive(Default)]
struct Behaviour {
    /// Path prefix -> (429 answers left, Retry-After value).
    throttle: Vec<(String, usize, String)>,
    /// Path prefixes whose bodies are cut in half (Content-Length says the whole).
    truncate: Vec<String>,
    delay: Duration,
}

/// A request the server saw: path with query, and when.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub target: String,
    pub at: Instant,
}

/// The running server; stops when dropped.
pub struct CollateralServer {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for CollateralServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read(vectors: &Path, path: &str) -> Result<Vec<u8>> {
    let path = vectors.join(path);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Intel's header encoding of a PEM chain.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The SNP report's chip ID (offset 0x1a0, 64 bytes), hex.
fn chip_id(report: &[u8]) -> String {
    hex::encode(&report[0x1a0..0x1e0])
}

/// Routes (path without query, or with the query for TCB info) -> answer.
fn routes(vectors: &Path) -> Result<HashMap<String, Answer>> {
    let read = |path: &str| read(vectors, path);
    let collateral: serde_json::Value =
        serde_json::from_slice(&read("tdx/tdx_quote_collateral.json")?)?;
    let field = |name: &str| collateral[name].as_str().unwrap_or_default().to_owned();
    let tcb_info: serde_json::Value = serde_json::from_str(&field("tcb_info"))?;
    let fmspc = tcb_info["fmspc"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let json = |body: String| Answer {
        content_type: "application/json",
        headers: Vec::new(),
        body: body.into_bytes(),
    };
    let mut routes = HashMap::new();
    let mut tcb = json(format!(
        r#"{{"tcbInfo":{},"signature":"{}"}}"#,
        field("tcb_info"),
        field("tcb_info_signature")
    ));
    tcb.headers.push((
        "TCB-Info-Issuer-Chain",
        url_encode(&field("tcb_info_issuer_chain")),
    ));
    routes.insert(format!("/tdx/certification/v4/tcb?fmspc={fmspc}"), tcb);
    let mut qe = json(format!(
        r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
        field("qe_identity"),
        field("qe_identity_signature")
    ));
    qe.headers.push((
        "SGX-Enclave-Identity-Issuer-Chain",
        url_encode(&field("qe_identity_issuer_chain")),
    ));
    routes.insert("/tdx/certification/v4/qe/identity".into(), qe);
    routes.insert(
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der".into(),
        Answer {
            content_type: "application/pkix-crl",
            headers: vec![(
                "SGX-PCK-CRL-Issuer-Chain",
                url_encode(&field("pck_crl_issuer_chain")),
            )],
            body: hex::decode(field("pck_crl"))?,
        },
    );
    routes.insert(
        "/sgx/certification/v4/rootcacrl".into(),
        Answer {
            content_type: "application/pkix-crl",
            headers: Vec::new(),
            body: hex::decode(field("root_ca_crl"))?,
        },
    );
    amd_routes(vectors, &mut routes)?;
    Ok(routes)
}

/// AMD KDS's routes: VCEKs, ASK/ARK and ASVK/ARK chains.
fn amd_routes(vectors: &Path, routes: &mut HashMap<String, Answer>) -> Result<()> {
    let read = |path: &str| read(vectors, path);
    let der = |body| Answer {
        content_type: "application/x-x509-ca-cert",
        headers: Vec::new(),
        body,
    };
    let milan_report =
        hex::decode(String::from_utf8(read("virtee-sev/report_milan.hex")?)?.trim())?;
    for (report, vcek) in [
        (milan_report, "virtee-sev/vcek_milan.der"),
        (
            read("trustee/snp-test-report.bin")?,
            "trustee/snp-test-vcek.der",
        ),
    ] {
        routes.insert(
            format!("/vcek/v1/Milan/{}", chip_id(&report)),
            der(read(vcek)?),
        );
    }
    for (product, chain) in [
        ("Milan", "virtee-sev/cert_chain_milan.pem"),
        ("Genoa", "go-sev-guest/ask_ark_genoa.pem"),
        ("Turin", "virtee-sev/cert_chain_turin.pem"),
    ] {
        routes.insert(
            format!("/vcek/v1/{product}/cert_chain"),
            Answer {
                content_type: "application/x-pem-file",
                headers: Vec::new(),
                body: read(chain)?,
            },
        );
    }
    for (product, bundle) in [
        ("Milan", "trustee/milan_ask_ark_asvk.pem"),
        ("Genoa", "trustee/genoa_ask_ark_asvk.pem"),
    ] {
        routes.insert(
            format!("/vlek/v1/{product}/cert_chain"),
            Answer {
                content_type: "application/x-pem-file",
                headers: Vec::new(),
                body: asvk_ark(&read(bundle)?)?,
            },
        );
    }
    Ok(())
}

/// The ASVK then the ARK out of a PEM bundle that also holds the ASK (trustee's
/// `*_ask_ark_asvk.pem`), as KDS's `/vlek/v1/{product}/cert_chain` serves them.
fn asvk_ark(bundle: &[u8]) -> Result<Vec<u8>> {
    let certs = openssl::x509::X509::stack_from_pem(bundle)?;
    let common_name = |cert: &openssl::x509::X509| {
        cert.subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for prefix in ["SEV-VLEK-", "ARK-"] {
        let cert = certs
            .iter()
            .find(|c| common_name(c).starts_with(prefix))
            .with_context(|| format!("no {prefix}* certificate in the bundle"))?;
        out.extend_from_slice(&cert.to_pem()?);
    }
    Ok(out)
}

impl CollateralServer {
    /// Starts on a free loopback port, on its own runtime (for tests that run `cvm-cli`),
    /// serving the files of `vectors` (../shared/vectors).
    pub fn start(vectors: &Path) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut server = runtime.block_on(Self::start_on_current(vectors))?;
        server._runtime = Some(runtime);
        Ok(server)
    }

    async fn start_on_current(vectors: &Path) -> Result<Self> {
        let routes = Arc::new(Mutex::new(routes(vectors)?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r, b, s) = (routes.clone(), behaviour.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (routes, b, s) = (r.clone(), b.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &routes, &b, &s).await;
                });
            }
        });
        Ok(Self {
            addr,
            routes,
            behaviour,
            seen,
            task,
            _runtime: None,
        })
    }

    /// `http://127.0.0.1:PORT`: the base URL for `--kds-url` and `--pccs-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` at `path` (as [`target_key`] keys it: no query for VCEKs), replacing what
    /// was served there: for a TEST-ONLY signer's VCEK, chains and CRLs at KDS's paths.
    pub fn answer(&self, path: &str, content_type: &'static str, body: Vec<u8>) {
        let answer = Answer {
            content_type,
            headers: Vec::new(),
            body,
        };
        self.routes.lock().unwrap().insert(path.into(), answer);
    }

    /// Answers the next `times` requests whose path starts with `prefix` with 429 and this
    /// `Retry-After`.
    pub fn throttle(&self, prefix: &str, times: usize, retry_after: &str) {
        self.behaviour
            .lock()
            .unwrap()
            .throttle
            .push((prefix.into(), times, retry_after.into()));
    }

    /// Cuts the bodies of paths starting with `prefix` in half (the connection then closes).
    pub fn truncate(&self, prefix: &str) {
        self.behaviour.lock().unwrap().truncate.push(prefix.into());
    }

    /// Waits this long before each answer.
    pub fn delay(&self, delay: Duration) {
        self.behaviour.lock().unwrap().delay = delay;
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    routes: &Mutex<HashMap<String, Answer>>,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Vec<SeenRequest>>,
) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    seen.lock().unwrap().push(SeenRequest {
        target: target.clone(),
        at: Instant::now(),
    });
    let (throttled, truncate, delay) = {
        let mut b = behaviour.lock().unwrap();
        let throttled = b
            .throttle
            .iter_mut()
            .find(|(prefix, left, _)| *left > 0 && target.starts_with(prefix.as_str()))
            .map(|(_, left, retry_after)| {
                *left -= 1;
                retry_after.clone()
            });
        let truncate = b.truncate.iter().any(|p| target.starts_with(p.as_str()));
        (throttled, truncate, b.delay)
    };
    tokio::time::sleep(delay).await;
    let request_id = format!("{:032x}", seen.lock().unwrap().len());
    let route = routes.lock().unwrap().get(&target_key(&target)).cloned();
    let (status, answer) = match (throttled, route) {
        (Some(retry_after), _) => (
            "429 Too Many Requests",
            Answer {
                content_type: "text/plain",
                headers: vec![("Retry-After", retry_after)],
                body: b"Too Many Requests".to_vec(),
            },
        ),
        (None, Some(answer)) => ("200 OK", answer),
        (None, None) => (
            "404 Not Found",
            Answer {
                content_type: "text/plain",
                headers: Vec::new(),
                body: Vec::new(),
            },
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nRequest-ID: {request_id}\r\nConnection: close\r\n",
        answer.content_type,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    let body = if truncate {
        &answer.body[..answer.body.len() / 2]
    } else {
        &answer.body[..]
    };
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The route of a request target: VCEK queries (the TCB) are not part of the key; other
/// queries (fmspc, ca) are.
fn target_key(target: &str) -> String {
    match target.split_once('?') {
        Some((path, _)) if path.starts_with("/vcek/v1/") => path.to_owned(),
        _ => target.to_owned(),
    }
}

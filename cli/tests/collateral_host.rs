//! `cvm-cli collateral fetch --host` against a real agent (on a real swtpm) whose SEV-SNP reports
//! come from the TEST-ONLY signer, with the local KDS stand-in serving that signer's VCEK, chains
//! and CRLs at KDS's real paths: what the evidence lacks is fetched and cached, a second fetch asks
//! nothing, and `verify --host --offline` (and `update-workload`'s verification) then takes it from
//! the cache. The agent's evidence changes between the three shapes hosts give: no certificates
//! (the verifier fetches the VCEK), the VCEK carried, the VLEK carried (its ASVK chain fetched).

use cvm_agent::Agent;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud, Platform, SnpEvidence, Tee};
use cvm_attestation::workload::TokenCommitment;
use cvm_attester::{TeeBackend, TeeError, TeeEvidence, Tpm};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use test_support::collateral_server::CollateralServer;
use test_support::{busybox_image_archive, SnpTestSigner, Swtpm};

mod common;
use common::{agent_config, origins, stdout, stdout_json};

const TOKEN: &str = "collateral-host-token-0123456789abcdef0123";
const MEASUREMENT: [u8; 48] = [0x5a; 48];
/// The TEST-ONLY signer's TCB (below AMD's published minimum, so the golden names it).
const SIGNER_TCB: &str = "bootloader=3,tee=0,snp=8,microcode=115";

/// What the agent's SEV-SNP evidence carries besides the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing: a host without certificates in its extended report (the verifier fetches them).
    NoCertificates,
    /// The VCEK, as GCP's and most hosts' extended reports give it.
    Vcek,
    /// A VLEK-signed report with the VLEK alone (its ASVK/ARK chain is KDS's to give).
    Vlek,
}

/// The TEST-ONLY signer behind the agent's TEE interface, in the shape the test sets.
struct Backend {
    signer: SnpTestSigner,
    shape: Arc<Mutex<Shape>>,
}

impl TeeBackend for Backend {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(&mut self, _: &mut Tpm, ak: &[u8], nonce: &[u8]) -> Result<TeeEvidence, TeeError> {
        let data = cvm_attestation::binding::report_data(ak, nonce);
        let shape = *self.shape.lock().unwrap();
        let (report, vek) = match shape {
            Shape::Vlek => (
                self.signer.vlek_report(&data, &MEASUREMENT, 0x3_0000),
                self.signer.vlek_der(),
            ),
            Shape::Vcek => (
                self.signer.report(&data, &MEASUREMENT, 0x3_0000),
                self.signer.vcek_der(),
            ),
            Shape::NoCertificates => (
                self.signer.report(&data, &MEASUREMENT, 0x3_0000),
                Vec::new(),
            ),
        };
        let report = report.map_err(|e| TeeError::Other(e.to_string()))?;
        Ok(TeeEvidence {
            snp: Some(SnpEvidence {
                attestation_report: report.into(),
                vek_cert: vek.into(),
                cert_chain: Vec::new(),
                hcl_report: None,
            }),
            ..TeeEvidence::default()
        })
    }
}

/// The stand-in serves the signer's documents where KDS serves AMD's Milan ones.
fn serve_signer(server: &CollateralServer, signer: &SnpTestSigner) {
    let pem = |cert: &openssl::x509::X509| cert.to_pem().unwrap();
    let chip = hex::encode(signer.chip_id());
    let der = "application/x-x509-ca-cert";
    server.answer(&format!("/vcek/v1/Milan/{chip}"), der, signer.vcek_der());
    let ask_ark = [pem(signer.ask()), signer.ark_pem()].concat();
    server.answer(
        "/vcek/v1/Milan/cert_chain",
        "application/x-pem-file",
        ask_ark,
    );
    let asvk_ark = [pem(signer.asvk()), signer.ark_pem()].concat();
    server.answer(
        "/vlek/v1/Milan/cert_chain",
        "application/x-pem-file",
        asvk_ark,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let crl = signer.crl(&[], now - 3600, now + 86_400);
    for path in ["/vcek/v1/Milan/crl", "/vlek/v1/Milan/crl"] {
        server.answer(path, "application/pkix-crl", crl.clone());
    }
}

fn write_workload(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    for file in ["docker-compose.yml", "app.env"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("config/message.txt"), "collateral\n").unwrap();
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

/// `cvm-cli` with a private cache and HOME, run off the agent's runtime.
async fn cli(cache: &Path, args: Vec<String>) -> Output {
    let cache = cache.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
            .args(&args)
            .env("CVM_COLLATERAL_CACHE", &cache)
            .env("HOME", cache.join("home"))
            .env_remove("XDG_CACHE_HOME")
            .env_remove("CVM_KDS_URL")
            .output()
            .expect("cvm-cli runs")
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A check's reason in `verify --json`'s report.
fn reason(report: &serde_json::Value, name: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_else(|| panic!("no {name}: {report:#}"))
        .to_owned()
}

/// The files a verification of this agent needs.
struct Setup {
    host: String,
    golden: PathBuf,
    ak: PathBuf,
    ark: PathBuf,
    token: PathBuf,
    workload: PathBuf,
    cache: PathBuf,
}

impl Setup {
    async fn verify(&self, offline: bool) -> Output {
        let mut list = args(&[
            "verify",
            "--host",
            &self.host,
            "--golden",
            self.golden.to_str().unwrap(),
            "--trusted-ak",
            self.ak.to_str().unwrap(),
            "--test-root",
            self.ark.to_str().unwrap(),
            "--json",
        ]);
        if offline {
            list.push("--offline".into());
        }
        cli(&self.cache, list).await
    }

    async fn fetch(&self, kds: &str) -> Output {
        let list = [
            "collateral",
            "fetch",
            "--host",
            &self.host,
            "--kds-url",
            kds,
        ];
        cli(&self.cache, args(&[&list[..], &["--json"]].concat())).await
    }

    async fn update_workload(&self) -> Output {
        let list = args(&[
            "update-workload",
            "--host",
            &self.host,
            "--token-file",
            self.token.to_str().unwrap(),
            "--workload",
            self.workload.to_str().unwrap(),
            "--golden",
            self.golden.to_str().unwrap(),
            "--trusted-ak",
            self.ak.to_str().unwrap(),
            "--offline",
        ]);
        cli(&self.cache, list).await
    }
}

/// `cvm-cli golden` for the agent's workload (its token salt from the agent) and the signer's
/// launch measurement and TCB.
async fn golden(agent: &Agent, dir: &Path, workload: &Path, token: &Path) -> PathBuf {
    let log = agent.state.workloads.measured().await.log;
    let salt = hex::encode(TokenCommitment::first_salt(&log.events).unwrap());
    let golden = dir.join("golden.json");
    let list = args(&[
        "golden",
        "--workload",
        workload.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--token-salt",
        &salt,
        "--cloud",
        "qemu",
        "--tee",
        "sev-snp",
        "--snp-measurement",
        &hex::encode(MEASUREMENT),
        "--min-tcb",
        SIGNER_TCB,
        "--out",
        golden.to_str().unwrap(),
    ]);
    let output = cli(&dir.join("golden-cache"), list).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    golden
}

#[test]
fn fetch_host_caches_what_the_evidence_lacks_and_verify_offline_uses_it() {
    // The stand-in runs on its own runtime, made and dropped outside the agent's.
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(against_an_agent(&server));
}

/// The agent on `swtpm`, its reports from a fresh TEST-ONLY signer whose documents `server`
/// serves; the files a verification of it needs; the switch of its evidence's shape.
async fn start_agent(
    server: &CollateralServer,
    swtpm: &Swtpm,
    dir: &Path,
) -> (Agent, Setup, Arc<Mutex<Shape>>) {
    let signer = SnpTestSigner::new().unwrap();
    serve_signer(server, &signer);
    let workload = dir.join("workload");
    write_workload(&workload);
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let ark = dir.join("test-ark.pem");
    std::fs::write(&ark, signer.ark_pem()).unwrap();
    let config = agent_config(dir, workload.clone(), swtpm.tcti());
    let platform = Platform {
        cloud: Cloud::Qemu,
        tee: Tee::SevSnp,
    };
    let shape = Arc::new(Mutex::new(Shape::NoCertificates));
    let backend = Backend {
        signer,
        shape: shape.clone(),
    };
    let agent = Agent::start_with(config, platform, Box::new(backend))
        .await
        .unwrap();
    let ak = dir.join("ak.pub");
    std::fs::write(&ak, encode_base64(agent.state.tpm.ak_public())).unwrap();
    let setup = Setup {
        host: agent.external_addr.to_string(),
        golden: golden(&agent, dir, &workload, &token).await,
        ak,
        ark,
        token,
        workload,
        cache: dir.join("cache"),
    };
    (agent, setup, shape)
}

async fn against_an_agent(server: &CollateralServer) {
    let kds = server.url();
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (agent, setup, shape) = start_agent(server, &swtpm, dir.path()).await;

    // Offline with an empty cache: the missing VCEK is named with the command that gets it, by
    // `verify` and by `update-workload`, which then uploads nothing.
    let output = setup.verify(true).await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let chain = reason(&stdout_json(&output), "snp.chain");
    let hint = format!("cvm-cli collateral fetch --host {}", setup.host);
    assert!(
        chain.contains("VCEK of Milan chip") && chain.contains(&hint),
        "{chain}"
    );
    let output = setup.update_workload().await;
    assert_ne!(output.status.code(), Some(0), "{}", stdout(&output));
    let text = format!(
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(&hint) && text.contains("nothing was uploaded"),
        "{text}"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // The evidence has no certificates: VCEK, ASK/ARK chain and CRL are fetched, then cached.
    let output = setup.fetch(&kds).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(origins(&output), ["fetched"; 3]);
    assert_eq!(server.requests().len(), 3, "{:?}", server.requests());
    let output = setup.fetch(&kds).await;
    assert_eq!(origins(&output), ["cache"; 3]);
    assert_eq!(server.requests().len(), 3, "a second fetch made requests");

    let output = setup.verify(true).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report = stdout_json(&output);
    assert!(
        reason(&report, "snp.chain").contains("[VCEK: cache ("),
        "{report:#}"
    );
    assert!(
        reason(&report, "snp.crl").contains("[CRL: cache ("),
        "{report:#}"
    );
    // update-workload's verification takes the same cached VCEK (its chain then fails: it
    // trusts no TEST-ONLY root), and uploads nothing.
    let output = setup.update_workload().await;
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains("[VCEK: cache ("),
        "{}",
        stdout(&output)
    );

    // The evidence carries the VCEK: nothing is fetched for it.
    *shape.lock().unwrap() = Shape::Vcek;
    let output = setup.fetch(&kds).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(origins(&output), ["evidence", "cache", "cache"]);
    assert_eq!(server.requests().len(), 3);

    // A VLEK: its ASVK/ARK chain and CRL are fetched once, and verify uses them offline.
    *shape.lock().unwrap() = Shape::Vlek;
    let output = setup.fetch(&kds).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(origins(&output), ["evidence", "fetched", "fetched"]);
    assert_eq!(server.count("/vlek/v1/Milan/"), 2);
    let output = setup.fetch(&kds).await;
    assert_eq!(origins(&output), ["evidence", "cache", "cache"]);
    assert_eq!(server.requests().len(), 5, "{:?}", server.requests());
    let output = setup.verify(true).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let chain = reason(&stdout_json(&output), "snp.chain");
    assert!(
        chain.contains("[VLEK: evidence]") && chain.contains("[ASVK/ARK chain: cache ("),
        "{chain}"
    );
    drop(agent);
}

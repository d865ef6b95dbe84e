//! `cvm-cli collateral` and `verify`'s use of the cache, against a local stand-in for AMD KDS and
//! Intel PCCS that serves the REAL collateral of ../shared/vectors at the real paths, with the
//! real headers (test-support's `CollateralServer`): fetch fills the cache and is not repeated,
//! 429 + Retry-After is waited out (or given up on, clearly), 404 and truncated bodies are clear
//! errors, an exported bundle lets `verify --offline` pass from an empty cache, and corrupt
//! entries are refused and fetched again.

mod common;
use common::{origins, stdout, stdout_json, vector};
use std::path::Path;
use std::process::{Command, Output};
use test_support::collateral_server::CollateralServer;

/// Inside the real TDX collateral's validity (2025-06-19 to 2025-07-19) and the VCEKs'.
const AT: &str = "2025-07-01T00:00:00Z";
/// The era's TCB of the 2023 SNP vectors (see verify_cli.rs).
const VECTOR_ERA_TCB: &str = "bootloader=2,tee=0,snp=6,microcode=93";
const TCB_PATH: &str = "/tdx/certification/v4/tcb";
const QE_PATH: &str = "/tdx/certification/v4/qe/identity";

/// `cvm-cli` with a private cache and HOME, so nothing reads or writes the user's cache.
fn run(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
        .args(args)
        .env("CVM_COLLATERAL_CACHE", cache)
        .env("HOME", cache.join("home"))
        .env_remove("XDG_CACHE_HOME")
        .env_remove("CVM_KDS_URL")
        .env_remove("CVM_PCS_URL")
        .env_remove("CVM_PCCS_URL")
        .output()
        .expect("cvm-cli runs")
}

fn fetch(server: &CollateralServer, cache: &Path, input: &[&str]) -> Output {
    let url = server.url();
    let mut args = vec![
        "collateral",
        "fetch",
        "--pccs-url",
        &url,
        "--kds-url",
        &url,
        "--at",
        AT,
        "--json",
    ];
    args.extend_from_slice(input);
    run(cache, &args)
}

fn tdx_quote() -> String {
    vector("tdx/tdx_quote")
}

fn milan_report() -> String {
    vector("virtee-sev/report_milan.hex")
}

#[test]
fn fetch_fills_the_cache_and_a_second_fetch_asks_nothing() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let first = fetch(&server, &cache, &["--quote", &tdx_quote()]);
    assert_eq!(first.status.code(), Some(0), "{}", stdout(&first));
    assert_eq!(origins(&first), ["fetched"; 4]);
    assert_eq!(server.requests().len(), 4);
    let entry = cache.join("intel/tdx/tcb/b0c06f000000.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&entry).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "{}", entry.display());

    let second = fetch(&server, &cache, &["--quote", &tdx_quote()]);
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(origins(&second), ["cache"; 4]);
    assert_eq!(server.requests().len(), 4, "a second fetch made requests");

    // SNP: VCEK and ASK/ARK chain; no CRL in the vectors, so that one is reported missing.
    let snp = fetch(
        &server,
        &cache,
        &["--report", &milan_report(), "--product", "milan"],
    );
    assert_eq!(snp.status.code(), Some(0), "{}", stdout(&snp));
    assert_eq!(origins(&snp), ["fetched", "fetched", "-"]);
    let crl = &stdout_json(&snp)["items"][2];
    assert_eq!(crl["optional"], true);
    assert!(crl["error"].as_str().unwrap().contains("HTTP 404"), "{crl}");
    let again = fetch(&server, &cache, &["--report", &milan_report()]);
    assert_eq!(origins(&again), ["cache", "cache", "-"]);
    assert_eq!(server.count("/vcek/v1/Milan/cert_chain"), 1);
    assert_eq!(
        server.count("/vcek/v1/Milan/") - server.count("/vcek/v1/Milan/c"),
        1,
        "{:?}",
        server.requests()
    );
}

#[test]
fn a_429_is_waited_out_as_retry_after_says_or_given_up_clearly() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    server.throttle(TCB_PATH, 1, "1");
    let output = fetch(&server, dir.path(), &["--quote", &tdx_quote()]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let tcb: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with(TCB_PATH))
        .collect();
    assert_eq!(tcb.len(), 2);
    assert!(tcb[1].at.duration_since(tcb[0].at) >= std::time::Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HTTP 429, retrying in 1 s"));

    // A Retry-After beyond --max-wait: one request, then a clear failure naming URL and status.
    let dir = tempfile::tempdir().unwrap();
    server.throttle(QE_PATH, 1, "3600");
    let before = server.count(QE_PATH);
    let url = server.url();
    let output = run(
        dir.path(),
        &[
            "collateral",
            "fetch",
            "--quote",
            &tdx_quote(),
            "--pccs-url",
            &url,
            "--at",
            AT,
            "--max-wait",
            "5",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(
        text.contains(&format!(
            "GET {url}{QE_PATH}: HTTP 429, gave up after 1 attempts"
        )) && text.contains("beyond the 5 s left of --max-wait"),
        "{text}"
    );
    assert_eq!(server.count(QE_PATH), before + 1);
}

#[test]
fn unknown_chips_and_truncated_bodies_are_clear_errors() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A real report of a chip the service does not know.
    let output = fetch(
        &server,
        dir.path(),
        &[
            "--report",
            &vector("azure-cvm-tooling/hcl-report-snp.bin"),
            "--product",
            "milan",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let error = stdout_json(&output)["items"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("HTTP 404: the service does not know the VCEK of Milan chip"),
        "{error}"
    );

    // A TEST-ONLY quote whose FMSPC the service does not know.
    let signer = test_support::tdx_signer::TdxTestSigner::new().unwrap();
    let quote = signer.quote(&signer.body(&[7; 64])).unwrap();
    let quote_path = dir.path().join("test-quote.bin");
    std::fs::write(&quote_path, quote).unwrap();
    let output = fetch(
        &server,
        dir.path(),
        &["--quote", quote_path.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    let error = stdout_json(&output)["items"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("HTTP 404") && error.contains("FMSPC 00906ed50000"),
        "{error}"
    );

    // A body cut short: an error naming the URL, and nothing cached.
    server.truncate("/sgx/certification/v4/rootcacrl");
    let cache = dir.path().join("cache");
    let output = fetch(&server, &cache, &["--quote", &tdx_quote()]);
    assert_eq!(output.status.code(), Some(1));
    let error = stdout_json(&output)["items"][3]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("/sgx/certification/v4/rootcacrl"), "{error}");
    assert!(!cache.join("intel/root_ca_crl.json").exists());
}

fn verify_offline(cache: &Path, report: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "verify",
        "--offline",
        "--report",
        report,
        "--at",
        AT,
        "--json",
    ];
    args.extend_from_slice(extra);
    run(cache, &args)
}

fn check(output: &Output, name: &str) -> serde_json::Value {
    stdout_json(output)["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name}: {}", stdout(output)))
}

#[test]
fn an_exported_bundle_lets_verify_offline_pass_from_an_empty_cache() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let online = dir.path().join("online");
    assert_eq!(
        fetch(&server, &online, &["--quote", &tdx_quote()])
            .status
            .code(),
        Some(0)
    );
    fetch(
        &server,
        &online,
        &["--report", &milan_report(), "--product", "milan"],
    );
    let bundle = dir.path().join("bundle.json");
    let output = run(
        &online,
        &["collateral", "export", "--out", bundle.to_str().unwrap()],
    );
    assert!(
        stdout(&output).contains("exported 6 entries"),
        "{}",
        stdout(&output)
    );

    let offline = dir.path().join("offline");
    let output = run(
        &offline,
        &["collateral", "import", bundle.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("imported 6 entries"));
    let requests = server.requests().len();
    drop(server);

    let output = verify_offline(&offline, &tdx_quote(), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let collateral = check(&output, "tdx.collateral");
    assert!(
        collateral["reason"]
            .as_str()
            .unwrap()
            .contains("[collateral: cache ("),
        "{collateral}"
    );
    let output = verify_offline(&offline, &milan_report(), &["--min-tcb", VECTOR_ERA_TCB]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let chain = check(&output, "snp.chain");
    assert!(
        chain["reason"].as_str().unwrap().contains("[VCEK: cache ("),
        "{chain}"
    );
    assert_eq!(
        requests, 7,
        "the export and the verifications fetched nothing"
    );
}

#[test]
fn offline_with_an_empty_cache_fails_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let output = verify_offline(dir.path(), &tdx_quote(), &[]);
    assert_eq!(output.status.code(), Some(1));
    let reason = check(&output, "tdx.collateral")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("TDX TCB info for FMSPC b0c06f000000: not in the cache")
            && reason.contains(&format!(
                "cvm-cli collateral fetch --report {}",
                tdx_quote()
            ))
            && reason.contains("cvm-cli collateral import BUNDLE"),
        "{reason}"
    );
    let output = verify_offline(dir.path(), &milan_report(), &[]);
    assert_eq!(output.status.code(), Some(1));
    let chain = check(&output, "snp.chain");
    assert_eq!(chain["status"], "fail");
    assert!(
        chain["reason"]
            .as_str()
            .unwrap()
            .contains("VCEK of Milan chip"),
        "{chain}"
    );
}

#[test]
fn corrupt_entries_are_refused_and_fetched_again_when_online() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fetch(&server, &cache, &["--quote", &tdx_quote()]);
    let entry = cache.join("intel/tdx/tcb/b0c06f000000.json");
    // A valid envelope whose body is not TCB info, and then not even JSON.
    let mut envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
    envelope["body"] = "eyJ0Y2JJbmZvIjoxfQ==".into();
    std::fs::write(&entry, envelope.to_string()).unwrap();

    let shown = run(&cache, &["collateral", "show", "--at", AT, "--json"]);
    let listed = stdout_json(&shown);
    let corrupt: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "corrupt")
        .collect();
    assert_eq!(corrupt.len(), 1, "{listed}");
    assert!(corrupt[0]["problem"]
        .as_str()
        .unwrap()
        .contains("Intel TCB info"));

    let output = verify_offline(&cache, &tdx_quote(), &[]);
    assert_eq!(output.status.code(), Some(1));
    let reason = check(&output, "tdx.collateral")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("b0c06f000000.json") && reason.contains("Intel TCB info"),
        "{reason}"
    );

    std::fs::write(&entry, b"not json").unwrap();
    let before = server.count(TCB_PATH);
    let output = fetch(&server, &cache, &["--quote", &tdx_quote()]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(origins(&output), ["fetched", "cache", "cache", "cache"]);
    assert_eq!(server.count(TCB_PATH), before + 1);
    assert!(String::from_utf8_lossy(&output.stderr).contains("fetching it again"));
    assert_eq!(
        verify_offline(&cache, &tdx_quote(), &[]).status.code(),
        Some(0)
    );

    // prune drops what is stale at the given time and keeps the rest.
    let output = run(
        &cache,
        &[
            "collateral",
            "prune",
            "--at",
            "2026-01-01T00:00:00Z",
            "--json",
        ],
    );
    let pruned = stdout_json(&output);
    // TCB info, QE identity and PCK CRL went stale in 2025; the root CA CRL is current longer.
    assert_eq!(
        (&pruned["stale"], &pruned["kept"]),
        (&3.into(), &1.into()),
        "{pruned}"
    );
    let listed = stdout_json(&run(&cache, &["collateral", "show", "--json"]));
    assert_eq!(listed[0]["key"], "intel/root_ca_crl", "{listed}");
}

#[test]
fn concurrent_fetches_of_one_key_make_one_request() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    server.delay(std::time::Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
                .args([
                    "collateral",
                    "fetch",
                    "--quote",
                    &tdx_quote(),
                    "--pccs-url",
                    &url,
                ])
                .args(["--at", AT])
                .env("CVM_COLLATERAL_CACHE", dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(server.requests().len(), 4, "{:?}", server.requests());
}

/// A real VLEK-signed report (AWS-style): `collateral fetch` gets the ASVK/ARK chain from KDS's
/// `/vlek/v1/Milan/cert_chain` and says the VLEK itself is not on KDS; `verify --offline` with
/// the VLEK then passes through the cached chain; without the VLEK it fails saying where a VLEK
/// comes from; with an empty cache it fails naming the chain to fetch.
#[test]
fn a_vlek_report_gets_its_asvk_chain_from_kds_and_verifies_offline() {
    let server = CollateralServer::start(Path::new(common::VECTORS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let report = vector("trustee/snp-test-vlek-report.bin");
    let vlek = vector("trustee/snp-test-vlek.der");

    let output = fetch(&server, &cache, &["--report", &report]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(origins(&output), ["-", "fetched", "-"]);
    let items = stdout_json(&output)["items"].clone();
    assert_eq!(items[0]["what"], "VLEK");
    let note = items[0]["note"].as_str().unwrap();
    assert!(
        note.contains("not served by AMD KDS") && note.contains("extended report"),
        "{note}"
    );
    assert_eq!(items[1]["key"], "amd/Milan/vlek_cert_chain");
    assert!(items[2]["error"]
        .as_str()
        .unwrap()
        .contains("/vlek/v1/Milan/crl"));
    assert_eq!(server.count("/vlek/v1/Milan/cert_chain"), 1);
    assert_eq!(server.count("/vcek/"), 0, "{:?}", server.requests());
    let again = fetch(&server, &cache, &["--report", &report]);
    assert_eq!(origins(&again), ["-", "cache", "-"]);
    assert_eq!(server.count("/vlek/v1/Milan/cert_chain"), 1);

    let extra = ["--vcek", vlek.as_str(), "--min-tcb", VECTOR_ERA_TCB];
    let output = verify_offline(&cache, &report, &extra);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let chain = check(&output, "snp.chain");
    assert!(
        chain["reason"]
            .as_str()
            .unwrap()
            .contains("[ASVK/ARK chain: cache ("),
        "{chain}"
    );

    // No VLEK: KDS cannot give it, and the failure says where it comes from.
    let output = verify_offline(&cache, &report, &["--min-tcb", VECTOR_ERA_TCB]);
    assert_eq!(output.status.code(), Some(1));
    let chain = check(&output, "snp.chain");
    let reason = chain["reason"].as_str().unwrap();
    assert!(
        reason.contains("AMD KDS does not serve") && reason.contains("extended report"),
        "{chain}"
    );

    // An empty cache offline: the chain is named, with the command that fetches it.
    let empty = dir.path().join("empty");
    let output = verify_offline(&empty, &report, &extra);
    assert_eq!(output.status.code(), Some(1));
    let chain = check(&output, "snp.chain");
    assert_eq!(chain["status"], "fail");
    let reason = chain["reason"].as_str().unwrap();
    assert!(
        reason.contains("Milan ASVK/ARK chain: not in the cache")
            && reason.contains(&format!("cvm-cli collateral fetch --report {report}")),
        "{chain}"
    );
}

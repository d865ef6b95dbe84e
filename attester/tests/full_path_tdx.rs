//! The whole pipeline for Intel TDX on a real software TPM: measure a workload into PCR 23,
//! collect evidence over a nonce with the issuer code (TPM quote from swtpm; the TD quote from a
//! TEST-ONLY DCAP signer standing in for the TDX module and Quoting Enclave), serialize it, and
//! verify it, for GCP-TDX (a TD quote per request binding the AK and the nonce) and Azure-TDX (the
//! HCL report in vTPM NV whose TD report binds var_data, quoted as Azure's quote service would).
//! The verifier trusts the signer's root only because these tests name it; every tamper is
//! rejected by a named check, and so are revoked, missing or stale CRLs and collateral the
//! judged machine picks for itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cvm_attestation::evidence::{Cloud, TdxEvidence, Tee};
use cvm_attestation::golden::{GoldenMeasurement, GoldenTdx};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::TdxCollateral;
use cvm_attestation::tpm::AkPublic;
use cvm_attestation::verify::Status;
use cvm_attestation::workload::WorkloadEvent;
use cvm_attestation::{verify, Sha384Digest, VerifyOptions};
use cvm_attester::tee::{AzureTdx, TeeBackend, TeeError, TeeEvidence};
use cvm_attester::tpm::AZURE_AK_HANDLE;
use cvm_attester::Tpm;
use test_support::tdx_signer::{self, CollateralOptions, TdxTestSigner};
use test_support::GoogleTestCa;

mod common;
use common::{failed, golden_base, workload_events, Vm, NONCE};

fn collateral(signer: &TdxTestSigner, options: CollateralOptions) -> TdxCollateral {
    TdxCollateral::from_json(&signer.collateral_json_with(options).unwrap()).unwrap()
}

/// GCP-style TDX: a fresh TD quote per request (configfs-tsm / `/dev/tdx_guest`) whose
/// report_data binds the AK and the nonce.
struct TestGcpTdx {
    signer: TdxTestSigner,
    debug: bool,
    /// The collateral the machine puts in its evidence (`None`: none).
    carried: Option<CollateralOptions>,
    /// RTMR3 in every quote: zero (a kernel without the RTMR interface) unless a test extends.
    rtmr3: [u8; 48],
}

impl TestGcpTdx {
    fn new(carried: Option<CollateralOptions>) -> Self {
        Self {
            signer: TdxTestSigner::new().unwrap(),
            debug: false,
            carried,
            rtmr3: tdx_signer::RTMR[3],
        }
    }
}

impl TeeBackend for TestGcpTdx {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence(&mut self, _: &mut Tpm, ak: &[u8], nonce: &[u8]) -> Result<TeeEvidence, TeeError> {
        let data = cvm_attestation::binding::report_data(ak, nonce);
        let body = if self.debug {
            self.signer.debug_body(&data)
        } else {
            self.signer.body_with_rtmr3(&data, &self.rtmr3)
        };
        let quote = self
            .signer
            .quote(&body)
            .map_err(|e| TeeError::Other(e.to_string()))?;
        Ok(TeeEvidence {
            tdx: Some(TdxEvidence {
                quote: quote.into(),
                collateral: self.carried.map(|c| collateral(&self.signer, c)),
                hcl_report: None,
            }),
            ..TeeEvidence::default()
        })
    }
}

/// A stand-in for Azure's TD quote service (IMDS `/acc/tdquote`), which exists only inside Azure:
/// it answers `{"report": base64url}` with the quote the TEST-ONLY signer made for exactly that TD
/// report, and refuses any other report. Everything else is the real `AzureTdx` code path.
fn fake_quote_service(expected_report: Vec<u8>, quote: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/acc/tdquote", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            // Headers, then as many body bytes as Content-Length says.
            let (head_end, length) = loop {
                let n = stream.read(&mut buffer).unwrap_or(0);
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buffer[..n]);
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (end + 4, length);
                }
            };
            while request.len() < head_end + length {
                let n = stream.read(&mut buffer).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            let body: serde_json::Value =
                serde_json::from_slice(&request[head_end..]).unwrap_or_default();
            let report = body["report"]
                .as_str()
                .and_then(|r| URL_SAFE_NO_PAD.decode(r).ok());
            let (status, answer) = if report.as_deref() == Some(&expected_report[..]) {
                (
                    "200 OK",
                    serde_json::json!({ "quote": URL_SAFE_NO_PAD.encode(&quote) }).to_string(),
                )
            } else {
                (
                    "400 Bad Request",
                    "{\"error\":\"unknown TD report\"}".to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    url
}

fn golden(events: Vec<WorkloadEvent>) -> GoldenMeasurement {
    GoldenMeasurement {
        tdx: Some(GoldenTdx {
            mrtds: vec![Sha384Digest(tdx_signer::MRTD)],
            rtmr0: Some(Sha384Digest(tdx_signer::RTMR[0])),
            rtmr1: Some(Sha384Digest(tdx_signer::RTMR[1])),
            rtmr2: Some(Sha384Digest(tdx_signer::RTMR[2])),
            rtmr3: None,
            mrseams: vec![Sha384Digest(tdx_signer::MRSEAM)],
            ..GoldenTdx::default()
        }),
        ..golden_base(events)
    }
}

fn test_root(signer: &TdxTestSigner) -> TrustedRoot {
    TrustedRoot {
        name: "TDX test signer".into(),
        certificate: signer.root().clone(),
        test_only: true,
    }
}

const TDX_CHECKS: &[&str] = &[
    "tdx.quote",
    "tdx.pck_chain",
    "tdx.qe_report_signature",
    "tdx.qe_report_data",
    "tdx.quote_signature",
    "tdx.collateral",
    "tdx.tcb_info",
    "tdx.qe_identity",
    "tdx.crl",
    "tdx.tcb_status",
    "tdx.debug",
    "tdx.mrseam",
    "tdx.mrtd",
    "tdx.rtmr[0]",
    "tdx.rtmr[1]",
    "tdx.rtmr[2]",
    "tdx.report_data",
];

#[test]
fn gcp_tdx_verifies_with_the_named_test_root_only_and_rejects_each_tamper() {
    let mut machine = GcpTdxMachine::boot(Some(CollateralOptions::default()));
    let evidence = machine.evidence(NONCE);
    assert_eq!(evidence.platform().tee, Tee::Tdx);
    let (golden, options) = (machine.golden.clone(), machine.options());
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    for name in TDX_CHECKS
        .iter()
        .chain(&["tpm.quote.signature", "workload.replay"])
    {
        assert_eq!(
            report.check(name).map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }
    assert!(report
        .check("tdx.pck_chain")
        .unwrap()
        .reason
        .contains("TEST-ONLY root"));

    // Without naming the test root, Intel's pinned root rejects the chain.
    let mut intel_only = options.clone();
    intel_only.tdx_roots = cvm_attestation::tdx::intel_roots();
    let report = verify(&evidence, &golden, &intel_only);
    assert_eq!(failed(&report), ["tdx.pck_chain"], "{report}");

    // The TD quote from one request does not fit another nonce (report_data binding), nor the
    // TPM quote, whose qualifying data binds the TEE report it was made with.
    let other = machine.evidence(b"a second nonce 0003");
    let mut mixed = evidence.clone();
    mixed.tdx = other.tdx.clone();
    assert_eq!(
        failed(&verify(&mixed, &golden, &options)),
        ["tdx.report_data", "tpm.quote.nonce"]
    );

    // A flipped byte in the quote's body breaks its signature (and the TPM quote's binding of it).
    let mut altered = evidence.clone();
    altered.tdx.as_mut().unwrap().quote.0[48 + 136] ^= 1; // MRTD
    assert_eq!(
        failed(&verify(&altered, &golden, &options)),
        ["tdx.quote_signature", "tpm.quote.nonce"]
    );

    // An MRTD / RTMR the golden does not allow.
    let mut strict = golden.clone();
    let tdx = strict.tdx.as_mut().unwrap();
    tdx.mrtds = vec![Sha384Digest([0; 48])];
    tdx.rtmr2 = Some(Sha384Digest([0; 48]));
    assert_eq!(
        failed(&verify(&evidence, &strict, &options)),
        ["tdx.mrtd", "tdx.rtmr[2]"]
    );

    // A debuggable TD.
    machine.tee.debug = true;
    let debug = machine.evidence(NONCE);
    assert_eq!(failed(&verify(&debug, &golden, &options)), ["tdx.debug"]);

    // Collateral whose TCB info was tampered with after signing.
    let mut forged = evidence.clone();
    let c = forged.tdx.as_mut().unwrap().collateral.as_mut().unwrap();
    c.tcb_info = c.tcb_info.replace("OutOfDate", "UpToDate");
    let report = verify(&forged, &golden, &options);
    assert!(failed(&report).contains(&"tdx.tcb_info"), "{report}");
}

/// RTMR3 is the TD's own register: the host that owns the vTPM cannot extend it. When the TD's
/// kernel lets the agent extend it (Linux 6.16+), the workload log must replay to it too.
#[test]
fn workload_rtmr3_is_checked_against_the_tds_own_register() {
    let mut machine = GcpTdxMachine::boot(Some(CollateralOptions::default()));
    let (golden, options) = (machine.golden.clone(), machine.options());
    let log = machine.vm.log.clone();
    assert!(
        log.events.len() > 2,
        "the example workload has several events"
    );

    // The agent extended every event's SHA-384 digest into RTMR3, in log order.
    machine.tee.rtmr3 = log.replay_sha384().0;
    let evidence = machine.evidence(NONCE);
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    let check = report.check("workload.rtmr3").unwrap();
    assert_eq!(check.status, Status::Pass, "{report}");
    assert!(
        check
            .reason
            .contains("TEE's own register confirms the workload log"),
        "{}",
        check.reason
    );
    assert_eq!(
        check
            .expected
            .as_deref()
            .map(|e| e.starts_with(&check.actual.clone().unwrap())),
        Some(true)
    );
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    let at = |name| names.iter().position(|n| *n == name).unwrap();
    assert_eq!(at("workload.rtmr3"), at("workload.replay") + 1);

    // The host replayed a different log into PCR 23 (here: one with an event the TD never
    // extended): PCR 23 and the log agree, RTMR3 does not.
    let missing = [&log.events[..1], &log.events[2..]].concat();
    machine.tee.rtmr3 = cvm_attestation::workload::log::replay_sha384(&missing).0;
    let evidence = machine.evidence(NONCE);
    let report = verify(&evidence, &golden, &options);
    assert_eq!(failed(&report), ["workload.rtmr3"], "{report}");
    assert_eq!(
        report.check("workload.replay").unwrap().status,
        Status::Pass
    );

    // A kernel without the interface: RTMR3 stays zero, the check is skipped with the reason and
    // the verdict rests on PCR 23 (as before).
    machine.tee.rtmr3 = [0; 48];
    let evidence = machine.evidence(NONCE);
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    let check = report.check("workload.rtmr3").unwrap();
    assert_eq!(check.status, Status::Skip, "{report}");
    assert!(
        check
            .reason
            .contains("no RTMR extension to user space (Linux < 6.16)")
            && check.reason.contains("the vTPM's PCR 23 alone"),
        "{}",
        check.reason
    );

    // The agent says it could not extend RTMR3 after PCR 23: a zero RTMR3 is then no excuse.
    let mut failed_extend = evidence.clone();
    failed_extend
        .event_logs
        .workload
        .as_mut()
        .unwrap()
        .rtmr3_failure = Some("writing rtmr3:sha384: Invalid argument (os error 22)".into());
    let report = verify(&failed_extend, &golden, &options);
    assert_eq!(failed(&report), ["workload.rtmr3"], "{report}");
    let reason = &report.check("workload.rtmr3").unwrap().reason;
    assert!(reason.contains("could not extend RTMR3"), "{reason}");
}

#[test]
fn azure_tdx_takes_the_ak_from_var_data_bound_by_the_td_report() {
    let events = workload_events(None);
    let signer = TdxTestSigner::new().unwrap();
    let root = test_root(&signer);
    let bare_root = test_root(&signer);
    let collateral = collateral(&signer, CollateralOptions::default());
    let mut vm = Vm::boot(events.clone(), Some(AZURE_AK_HANDLE), true);

    // What Azure's paravisor puts in vTPM NV: an HCL report whose TD report binds var_data,
    // which holds the AK.
    let ak = AkPublic::from_bytes(&vm.ak.public).unwrap();
    let rsa = ak.key.rsa().unwrap();
    let var_data = serde_json::to_vec(&serde_json::json!({
        "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                  "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
                  "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec())}],
        "vm-configuration": {"secure-boot": true, "tpm-enabled": true}
    }))
    .unwrap();
    let (hcl, body) = signer.hcl_report(&var_data);
    assert!(
        hcl.len() <= 2048,
        "swtpm NV indices hold at most 2048 bytes"
    );
    vm.tpm
        .nv_provision(cvm_attestation::azure::HCL_NV_INDEX, &hcl)
        .unwrap();
    let quote = signer.quote(&body).unwrap();
    let mut tee = AzureTdx {
        quote_service: fake_quote_service(hcl[0x20..0x20 + 1024].to_vec(), quote),
    };
    let evidence = vm.evidence(&mut tee, Cloud::Azure, NONCE);
    let golden = golden(events);
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_tdx_test_roots([root])
        .with_tdx_collateral(collateral);
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    for name in TDX_CHECKS.iter().chain(&["azure.hcl_report", "tpm.ak"]) {
        assert_eq!(
            report.check(name).map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }
    assert!(report.check("tpm.ak").unwrap().reason.contains("var_data"));
    assert!(report
        .check("tdx.collateral")
        .unwrap()
        .reason
        .contains("supplied by the verifier"));

    // Without collateral, the TCB cannot be judged.
    let bare = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_tdx_test_roots([bare_root]);
    assert_eq!(
        failed(&verify(&evidence, &golden, &bare)),
        ["tdx.collateral"]
    );

    // Another var_data (another AK) breaks the binding to the quoted TD report.
    let mut altered = evidence.clone();
    let hcl = altered.tdx.as_mut().unwrap().hcl_report.as_mut().unwrap();
    let last = hcl.0.len() - 3;
    hcl.0[last] ^= 0x20;
    let report = verify(&altered, &golden, &options);
    assert!(failed(&report).contains(&"tdx.report_data"), "{report}");

    // A TD report in the HCL report that is not the quoted one.
    let mut altered = evidence.clone();
    let hcl = altered.tdx.as_mut().unwrap().hcl_report.as_mut().unwrap();
    hcl.0[0x20 + 128] ^= 1; // report_data of the TD report
    let report = verify(&altered, &golden, &options);
    assert!(failed(&report).contains(&"azure.hcl_report"), "{report}");
}

/// A GCP-TDX machine: a vTPM whose AK a TEST-ONLY Google CA certified, a TEST-ONLY TDX
/// platform whose evidence carries the collateral `carried` says, and the golden values.
struct GcpTdxMachine {
    tee: TestGcpTdx,
    ca: GoogleTestCa,
    vm: Vm,
    golden: GoldenMeasurement,
}

impl GcpTdxMachine {
    fn boot(carried: Option<CollateralOptions>) -> Self {
        let events = workload_events(None);
        let ca = GoogleTestCa::new().unwrap();
        let vm = Vm::boot_gce(events.clone(), &ca);
        Self {
            tee: TestGcpTdx::new(carried),
            ca,
            vm,
            golden: golden(events),
        }
    }

    fn evidence(&mut self, nonce: &[u8]) -> cvm_attestation::Evidence {
        self.vm.evidence(&mut self.tee, Cloud::Gcp, nonce)
    }

    /// Options naming both TEST-ONLY roots (TDX and Google's AK CA), supplying no collateral.
    fn options(&self) -> VerifyOptions {
        VerifyOptions::now()
            .with_nonce(NONCE)
            .with_tdx_test_roots([test_root(&self.tee.signer)])
            .with_gcp_test_ca(self.ca.trusted_root(), self.ca.intermediate_der())
    }

    /// Options that also supply the verifier's own collateral, made as `collateral` says.
    fn options_supplying(&self, collateral_options: CollateralOptions) -> VerifyOptions {
        self.options()
            .with_tdx_collateral(collateral(&self.tee.signer, collateral_options))
    }
}

/// Verifies and asserts that exactly `check` failed, with a reason containing each of `words`.
fn assert_only_failure(
    evidence: &cvm_attestation::Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
    check: &str,
    words: &[&str],
) {
    let report = verify(evidence, golden, options);
    assert!(!report.verified, "{report}");
    assert_eq!(failed(&report), [check], "{report}");
    let reason = &report.check(check).unwrap().reason;
    for word in words {
        assert!(reason.contains(word), "{check}: {reason:?} lacks {word:?}");
    }
}

#[test]
fn tdx_crl_fails_for_a_revoked_pck_and_for_missing_or_stale_crls() {
    // The machine carries collateral whose CRLs revoke nothing (what it fetched before its key
    // leaked); the verifier's own, newer collateral is what counts.
    let mut machine = GcpTdxMachine::boot(Some(CollateralOptions::default()));
    let evidence = machine.evidence(NONCE);
    let golden = machine.golden.clone();
    let report = verify(
        &evidence,
        &golden,
        &machine.options_supplying(CollateralOptions::default()),
    );
    assert!(report.verified, "{report}");
    assert_eq!(report.check("tdx.crl").unwrap().status, Status::Pass);

    // Intel revoked this platform's PCK certificate: its serial is in the PCK CRL.
    let serial = machine.tee.signer.pck().serial_number().to_bn().unwrap();
    let serial = serial.to_hex_str().unwrap().to_string();
    let revoked = machine.options_supplying(CollateralOptions {
        revoke_pck: true,
        ..CollateralOptions::default()
    });
    let words = ["revoked by the PCK CRL", serial.as_str()];
    assert_only_failure(&evidence, &golden, &revoked, "tdx.crl", &words);

    // Collateral without CRLs cannot show that the PCK is not revoked.
    let no_crls = CollateralOptions {
        crls: false,
        ..CollateralOptions::default()
    };
    let words = ["no PCK CRL", "no root CA CRL"];
    let options = machine.options_supplying(no_crls);
    assert_only_failure(&evidence, &golden, &options, "tdx.crl", &words);

    // Nor can CRLs whose nextUpdate has passed.
    let stale = machine.options_supplying(CollateralOptions {
        crl_validity: tdx_signer::STALE_CRLS,
        ..CollateralOptions::default()
    });
    assert_only_failure(&evidence, &golden, &stale, "tdx.crl", &["not current"]);

    // A machine that strips the CRLs from the collateral it carries gains nothing.
    machine.tee.carried = Some(no_crls);
    let stripped = machine.evidence(NONCE);
    let options = machine.options();
    assert_only_failure(&stripped, &golden, &options, "tdx.crl", &words);
}

#[test]
fn the_verifiers_collateral_wins_over_the_one_the_evidence_carries() {
    // The machine carries Intel's older evaluation (17), which still rated its TCB UpToDate;
    // the verifier holds the newer one (18), which rates it OutOfDate. Both are genuinely signed.
    let mut machine = GcpTdxMachine::boot(Some(CollateralOptions::default()));
    let evidence = machine.evidence(NONCE);
    let golden = machine.golden.clone();
    let options = machine.options_supplying(CollateralOptions {
        platform_status: "OutOfDate",
        tcb_evaluation: 18,
        ..CollateralOptions::default()
    });
    let words = ["OutOfDate"];
    assert_only_failure(&evidence, &golden, &options, "tdx.tcb_status", &words);
    let report = verify(&evidence, &golden, &options);
    let source = &report.check("tdx.collateral").unwrap().reason;
    assert!(source.contains("supplied by the verifier"), "{source}");

    // Only when the verifier has none is the carried collateral used, and the report says so.
    let report = verify(&evidence, &golden, &machine.options());
    assert!(report.verified, "{report}");
    let source = &report.check("tdx.collateral").unwrap().reason;
    assert!(source.contains("carried in the evidence"), "{source}");
}

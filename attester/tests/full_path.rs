//! The whole pipeline on a real software TPM: measure a workload into PCR 23, collect evidence
//! over a nonce with the issuer code, serialize it, and verify it with the verifier, for each
//! platform kind. SEV-SNP reports come from a TEST-ONLY signer whose root the verifier trusts only
//! because these tests name it; every tamper is rejected by a named check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cvm_attestation::evidence::Cloud;
use cvm_attestation::golden::{GoldenMeasurement, GoldenSnp};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tpm::AkPublic;
use cvm_attestation::verify::Status;
use cvm_attestation::workload::WorkloadEvent;
use cvm_attestation::{verify, VerifyOptions};
use cvm_attester::tee::{AzureSnp, NoTee};
use cvm_attester::tpm::AZURE_AK_HANDLE;
use test_support::{GoogleTestCa, NitroTestSigner, SnpTestSigner, TestSnpBackend};

mod common;
use common::{
    attach_nitro_document, failed, golden_base, named_root, nitro_boot_pcrs, workload_events, Vm,
    NONCE,
};

const MEASUREMENT: [u8; 48] = [0x42; 48];
const POLICY: u64 = 0x3_0000; // SMT allowed, reserved bit 17 set, debug off, no migration agent

fn golden(events: Vec<WorkloadEvent>, snp: Option<GoldenSnp>) -> GoldenMeasurement {
    GoldenMeasurement {
        snp,
        ..golden_base(events)
    }
}

fn test_root(signer: &SnpTestSigner) -> TrustedRoot {
    TrustedRoot {
        name: "test signer".into(),
        certificate: signer.ark().clone(),
        test_only: true,
    }
}

#[test]
fn qemu_without_tee_verifies_with_a_pinned_ak_and_rejects_each_tamper() {
    let events = workload_events(None);
    let mut vm = Vm::boot(events.clone(), None, false);
    let evidence = vm.evidence(&mut NoTee, Cloud::Qemu, NONCE);
    let golden = golden(events, None);
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_trusted_ak(vm.ak.public.clone());

    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    for name in [
        "nonce",
        "tpm.ak",
        "tpm.quote.signature",
        "tpm.quote.nonce",
        "tpm.quote.pcr_digest",
        "pcr[4]",
        "workload.replay",
        "workload.measurement",
    ] {
        assert_eq!(
            report.check(name).map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }

    // Without the pinned AK nothing vouches for a TPM without TEE.
    let unpinned = verify(&evidence, &golden, &VerifyOptions::now().with_nonce(NONCE));
    assert_eq!(
        failed(&unpinned),
        [
            "tpm.ak",
            "pcr[4]",
            "pcr[9]",
            "pcr[11]",
            "pcr[12]",
            "workload.replay"
        ]
    );

    // Wrong nonce.
    let report = verify(
        &evidence,
        &golden,
        &options.clone().with_nonce(b"another nonce 0002".to_vec()),
    );
    assert_eq!(failed(&report), ["nonce"]);

    // Altered PCR value.
    let mut altered = evidence.clone();
    altered.tpm.pcrs.pcrs.get_mut(&4).unwrap().0[0] ^= 1;
    let report = verify(&altered, &golden, &options);
    assert!(
        failed(&report).contains(&"tpm.quote.pcr_digest"),
        "{report}"
    );

    // Altered quote byte (in the clock info: still parses, signature breaks).
    let mut altered = evidence.clone();
    let offset = altered.tpm.quote.0.len() - 40;
    altered.tpm.quote.0[offset] ^= 1;
    let report = verify(&altered, &golden, &options);
    assert!(failed(&report).contains(&"tpm.quote.signature"), "{report}");

    // Another TPM's AK.
    let mut other = Vm::boot(workload_events(None), None, false);
    let mut altered = evidence.clone();
    altered.tpm.ak_pub = other.ak.public.clone().into();
    let report = verify(&altered, &golden, &options);
    assert!(failed(&report).contains(&"tpm.ak"), "{report}");

    // A quote replayed from an earlier nonce inside evidence for a new one.
    let earlier = other.evidence(&mut NoTee, Cloud::Qemu, b"an earlier nonce 00");
    let fresh = other.evidence(&mut NoTee, Cloud::Qemu, NONCE);
    let mut replayed = fresh.clone();
    replayed.tpm.quote = earlier.tpm.quote.clone();
    replayed.tpm.signature = earlier.tpm.signature.clone();
    let other_options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_trusted_ak(other.ak.public.clone());
    let report = verify(&replayed, &golden, &other_options);
    assert!(failed(&report).contains(&"tpm.quote.nonce"), "{report}");
}

#[test]
fn a_changed_config_file_fails_the_workload_check_with_a_readable_diff() {
    let mut vm = Vm::boot(workload_events(Some("changed\n")), None, false);
    let evidence = vm.evidence(&mut NoTee, Cloud::Qemu, NONCE);
    let golden = golden(workload_events(None), None);
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_trusted_ak(vm.ak.public.clone());
    let report = verify(&evidence, &golden, &options);
    assert_eq!(failed(&report), ["workload.measurement"], "{report}");
    let reason = &report.check("workload.measurement").unwrap().reason;
    assert!(
        reason.contains("config-file \"config/message.txt\" changed"),
        "{reason}"
    );
}

/// A TEST-ONLY SNP signer as the TEE, and the root that must be named to trust it.
fn snp_backend() -> (TestSnpBackend, TrustedRoot) {
    let signer = SnpTestSigner::new().unwrap();
    let root = test_root(&signer);
    let tee = TestSnpBackend {
        signer,
        measurement: MEASUREMENT,
        policy: POLICY,
    };
    (tee, root)
}

/// Golden SNP values that allow the test signer's measurement at VMPL 0.
fn golden_snp() -> GoldenSnp {
    GoldenSnp {
        measurements: vec![cvm_attestation::Sha384Digest(MEASUREMENT)],
        minimum_tcb: None,
        allow_debug: false,
        allow_migration_agent: false,
        vmpls: vec![0],
    }
}

/// Checks every SNP verdict of a GCP or AWS evidence: passes with the named TEST-ONLY roots,
/// fails by name without them, and refuses a report from another request.
fn assert_snp_cloud_verdicts(
    vm: &mut Vm,
    tee: &mut TestSnpBackend,
    cloud: Cloud,
    evidence: &cvm_attestation::Evidence,
    options: &VerifyOptions,
) {
    let golden = golden(workload_events(None), Some(golden_snp()));
    let report = verify(evidence, &golden, options);
    assert!(report.verified, "{cloud:?}: {report}");
    for name in [
        "tpm.ak",
        "tpm.quote.nonce",
        "snp.chain",
        "snp.signature",
        "snp.vcek_matches_report",
        "snp.report_data",
        "snp.measurement",
        "workload.replay",
    ] {
        assert_eq!(
            report.check(name).map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }
    assert!(report
        .check("snp.chain")
        .unwrap()
        .reason
        .contains("TEST-ONLY root"));
    assert!(report
        .check("tpm.ak")
        .unwrap()
        .reason
        .contains("TEST-ONLY root"));

    // Without naming the SNP test root, AMD's pinned roots reject the chain.
    let mut amd_only = options.clone();
    amd_only.snp_roots = cvm_attestation::snp::amd_roots();
    assert_eq!(failed(&verify(evidence, &golden, &amd_only)), ["snp.chain"]);

    // The SNP report of another request fits neither its report_data nor the quote.
    let other = vm.evidence(tee, cloud, b"a second nonce 0003");
    let mut mixed = evidence.clone();
    mixed.sev_snp = other.sev_snp.clone();
    let failures = failed(&verify(&mixed, &golden, options)).join(" ");
    assert!(failures.contains("snp.report_data"), "{failures}");
    assert!(
        failures.contains("tpm.quote.nonce") || failures.contains("tpm.ak"),
        "{failures}"
    );

    // A launch measurement the golden does not allow.
    let mut strict = golden.clone();
    strict.snp.as_mut().unwrap().measurements = vec![cvm_attestation::Sha384Digest([0; 48])];
    assert_eq!(
        failed(&verify(evidence, &strict, options)),
        ["snp.measurement"]
    );
}

#[test]
fn gcp_snp_verifies_with_googles_ak_certificate_from_the_named_test_ca_only() {
    let ca = GoogleTestCa::new().unwrap();
    let (mut tee, root) = snp_backend();
    let mut vm = Vm::boot_gce(workload_events(None), &ca);
    let evidence = vm.evidence(&mut tee, Cloud::Gcp, NONCE);
    assert!(evidence.tpm.ak_cert.is_some());
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_test_roots([root])
        .with_gcp_test_ca(ca.trusted_root(), ca.intermediate_der());
    assert_snp_cloud_verdicts(&mut vm, &mut tee, Cloud::Gcp, &evidence, &options);
    let reason = &verify(
        &evidence,
        &golden(workload_events(None), Some(golden_snp())),
        &options,
    )
    .check("tpm.ak")
    .unwrap()
    .reason
    .clone();
    assert!(
        reason.contains("confidential-1") && reason.contains("us-central1-a"),
        "{reason}"
    );

    // Without the TEST-ONLY CA named, Google's pinned root does not vouch for the AK.
    let mut google_only = options.clone();
    google_only.gcp_roots = cvm_attestation::gcp::google_ak_roots();
    let golden = golden(workload_events(None), Some(golden_snp()));
    let report = verify(&evidence, &golden, &google_only);
    assert!(failed(&report).contains(&"tpm.ak"), "{report}");
}

#[test]
fn aws_snp_verifies_with_an_aws_signed_nitrotpm_document_only() {
    let signer = NitroTestSigner::new().unwrap();
    let (mut tee, root) = snp_backend();
    let mut vm = Vm::boot(workload_events(None), None, false);
    let mut evidence = vm.evidence(&mut tee, Cloud::Aws, NONCE);
    attach_nitro_document(&mut evidence, &signer, &nitro_boot_pcrs());
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_test_roots([root])
        .with_nitro_test_roots([named_root("TEST-ONLY Nitro root", signer.root())]);
    let golden = golden(workload_events(None), Some(golden_snp()));
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    assert_eq!(
        report.check("nitro.pcrs").map(|c| c.status),
        Some(Status::Pass)
    );
    assert!(report.check("tpm.ak").unwrap().reason.contains("NitroTPM"));

    // Without the document, or with AWS's real root only, nothing vouches for the AK.
    let mut bare = evidence.clone();
    bare.tpm.nitro_document = None;
    assert!(failed(&verify(&bare, &golden, &options)).contains(&"tpm.ak"));
    let mut aws_only = options.clone();
    aws_only.nitro_roots = cvm_attestation::nitro::aws_nitro_roots();
    assert!(failed(&verify(&evidence, &golden, &aws_only)).contains(&"tpm.ak"));

    // The NitroTPM's PCRs show another boot chain: the agent that named the AK is not ours.
    let mut other_boot = nitro_boot_pcrs();
    other_boot.insert(4, vec![0x66; 48]);
    let mut evil = evidence.clone();
    attach_nitro_document(&mut evil, &signer, &other_boot);
    let report = verify(&evil, &golden, &options);
    assert!(failed(&report).contains(&"nitro.pcrs"), "{report}");
    assert!(failed(&report).contains(&"tpm.ak"), "{report}");

    // A golden without SHA-384 boot values cannot vouch for anything on AWS.
    let mut sha256_only = golden.clone();
    for pcr in sha256_only.pcrs.values_mut() {
        pcr.sha384 = None;
    }
    assert!(failed(&verify(&evidence, &sha256_only, &options)).contains(&"nitro.pcrs"));
}

#[test]
fn azure_snp_takes_the_ak_from_var_data_bound_by_the_report() {
    let events = workload_events(None);
    let signer = SnpTestSigner::new().unwrap();
    let root = test_root(&signer);
    let mut vm = Vm::boot(events.clone(), Some(AZURE_AK_HANDLE), true);
    assert_eq!(
        vm.ak.source,
        cvm_attester::AkSource::Persistent(AZURE_AK_HANDLE)
    );

    // What Azure's paravisor puts in vTPM NV: an HCL report whose var_data holds the AK.
    let ak = AkPublic::from_bytes(&vm.ak.public).unwrap();
    let rsa = ak.key.rsa().unwrap();
    let var_data = serde_json::to_vec(&serde_json::json!({
        "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                  "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
                  "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec())}],
        "vm-configuration": {"secure-boot": true, "tpm-enabled": true}
    }))
    .unwrap();
    let hcl = signer.hcl_report(&var_data, &MEASUREMENT, POLICY).unwrap();
    assert!(
        hcl.len() <= 2048,
        "swtpm NV indices hold at most 2048 bytes"
    );
    vm.tpm
        .nv_provision(cvm_attestation::azure::HCL_NV_INDEX, &hcl)
        .unwrap();

    let mut tee = AzureSnp {
        vcek_der: signer.vcek_der(),
        chain_der: vec![signer.ask_der()],
    };
    let evidence = vm.evidence(&mut tee, Cloud::Azure, NONCE);
    let golden = golden(
        events,
        Some(GoldenSnp {
            vmpls: vec![0],
            ..GoldenSnp::default()
        }),
    );
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_test_roots([root]);
    let report = verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    assert!(report.check("tpm.ak").unwrap().reason.contains("var_data"));
    assert_eq!(
        report.check("snp.measurement").unwrap().status,
        Status::Skip
    );

    // Another var_data (another AK) breaks the binding to the signed report.
    let mut altered = evidence.clone();
    let mut hcl = altered
        .sev_snp
        .as_ref()
        .unwrap()
        .hcl_report
        .clone()
        .unwrap();
    let last = hcl.0.len() - 3;
    hcl.0[last] ^= 0x20;
    altered.sev_snp.as_mut().unwrap().hcl_report = Some(hcl);
    let report = verify(&altered, &golden, &options);
    assert!(failed(&report).contains(&"snp.report_data"), "{report}");
}

/// An agent serving TLS binds its key with the nonce in the quote and the SNP report: evidence
/// verifies only against the key of the connection it came over, and moving it to another key
/// (a man in the middle presenting its own certificate) breaks both bindings.
#[test]
fn the_tls_key_is_bound_by_quote_and_report() {
    let events = workload_events(None);
    let (mut tee, root) = snp_backend();
    let agent_key = [0x11; 32];
    let ca = GoogleTestCa::new().unwrap();
    let mut vm = Vm::boot_gce(events.clone(), &ca);
    let evidence = vm.evidence_with_tls(&mut tee, Cloud::Gcp, NONCE, Some(agent_key));
    let golden = golden(events, Some(golden_snp()));
    let options = |key: Option<[u8; 32]>| {
        let mut options = VerifyOptions::now()
            .with_nonce(NONCE)
            .with_test_roots([root.clone()])
            .with_gcp_test_ca(ca.trusted_root(), ca.intermediate_der());
        options.expected_tls_key = key;
        options
    };

    let report = verify(&evidence, &golden, &options(Some(agent_key)));
    assert!(report.verified, "{report}");
    assert_eq!(
        report.check("tls.key").map(|c| c.status),
        Some(Status::Pass)
    );

    // Fetched over a connection that ended at another key: refused by name.
    let report = verify(&evidence, &golden, &options(Some([0x22; 32])));
    assert_eq!(failed(&report), ["tls.key"], "{report}");

    // The MITM rewrites the evidence to name its own key: quote and report no longer fit.
    let mut rewritten = evidence.clone();
    rewritten.tls_spki_sha256 = Some(vec![0x22; 32].into());
    let report = verify(&rewritten, &golden, &options(Some([0x22; 32])));
    assert_eq!(
        failed(&report),
        ["snp.report_data", "tpm.quote.nonce"],
        "{report}"
    );

    // Or drops the key: the bare nonce is not what was bound.
    let mut stripped = evidence.clone();
    stripped.tls_spki_sha256 = None;
    let report = verify(&stripped, &golden, &options(None));
    assert_eq!(
        failed(&report),
        ["snp.report_data", "tpm.quote.nonce"],
        "{report}"
    );

    // Offline, without a connection, the binding is reported, not silently assumed.
    let report = verify(&evidence, &golden, &options(None));
    assert!(report.verified, "{report}");
    assert_eq!(
        report.check("tls.key").map(|c| c.status),
        Some(Status::Skip)
    );
}

/// A cloud golden (`cvm-cli golden --cloud aws`) pins PCR 4 by the build's boot events, not by
/// its value: a cloud's firmware measures events of its own into PCR 4 (actions, separators).
/// The firmware log must replay (SHA-384) to the PCR 4 the AWS-signed document states, and hold
/// the UKI event.
#[test]
fn aws_boot_events_are_found_in_the_firmware_log_the_nitrotpm_document_authenticates() {
    use test_support::tcg_log::{
        Bank, TcgLogBuilder, EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION,
    };
    let signer = NitroTestSigner::new().unwrap();
    let (mut tee, root) = snp_backend();
    let mut vm = Vm::boot(workload_events(None), None, false);
    let uki = (
        openssl::sha::sha256(b"our UKI"),
        openssl::sha::sha384(b"our UKI"),
    );
    let action = b"Calling EFI Application from Boot Option";
    let log = |firmware_action: bool| {
        let mut log = TcgLogBuilder::new(&[Bank::Sha256, Bank::Sha384]);
        if firmware_action {
            log.measure(4, EV_EFI_ACTION, action);
        }
        log.extend(4, EV_EFI_BOOT_SERVICES_APPLICATION, &[&uki.0, &uki.1], b"");
        log.bytes()
    };
    // The firmware extends both banks; the agent's quote shows the SHA-256 one.
    vm.tpm
        .extend_sha256(4, &openssl::sha::sha256(action))
        .unwrap();
    vm.tpm.extend_sha256(4, &uki.0).unwrap();
    let mut evidence = vm.evidence(&mut tee, Cloud::Aws, NONCE);
    // The document's PCR 4 is what the NitroTPM holds after the firmware's action and our UKI.
    let mut pcrs = nitro_boot_pcrs();
    let mut pcr4 = [0u8; 48];
    for digest in [openssl::sha::sha384(action), uki.1] {
        pcr4 = openssl::sha::sha384(&[pcr4.as_slice(), digest.as_slice()].concat());
    }
    pcrs.insert(4, pcr4.to_vec());
    attach_nitro_document(&mut evidence, &signer, &pcrs);
    evidence.event_logs.firmware = Some(log(true).into());

    let mut golden = golden(workload_events(None), Some(golden_snp()));
    golden.pcrs.remove(&4);
    golden.boot_events = vec![cvm_attestation::golden::GoldenBootEvent {
        pcr: 4,
        sha256: cvm_attestation::Sha256Digest(uki.0),
        sha384: Some(cvm_attestation::Sha384Digest(uki.1)),
        description: "UKI".into(),
    }];
    let options = VerifyOptions::now()
        .with_nonce(NONCE)
        .with_test_roots([root])
        .with_nitro_test_roots([named_root("TEST-ONLY Nitro root", signer.root())]);
    let report = verify(&evidence, &golden, &options);
    assert_eq!(
        report.check("nitro.pcrs").map(|c| c.status),
        Some(Status::Pass),
        "{report}"
    );
    assert!(report.verified, "{report}");
    assert!(
        report
            .check("nitro.pcrs")
            .unwrap()
            .reason
            .contains("firmware event log"),
        "{report}"
    );

    // The log names our UKI but does not replay to the PCR 4 AWS signed: it proves nothing.
    let mut forged = evidence.clone();
    forged.event_logs.firmware = Some(log(false).into());
    let report = verify(&forged, &golden, &options);
    assert!(failed(&report).contains(&"nitro.pcrs"), "{report}");
    assert!(failed(&report).contains(&"tpm.ak"), "{report}");
}

//! The harness both full-path tests share: a software TPM with the example workload measured
//! into PCR 23, and evidence collected by the issuer code and passed through JSON.
#![allow(dead_code)]

use cvm_attestation::binding::nitro_user_data;
use cvm_attestation::evidence::{Cloud, Platform};
use cvm_attestation::gcp::{
    GceInstance, GceSecurityProperties, GCE_AK_CERT_NV_INDEX_RSA, GCE_AK_TEMPLATE_NV_INDEX_RSA,
};
use cvm_attestation::golden::{GoldenMeasurement, GoldenPcr, GoldenWorkload, PcrSource};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tpm::AkPublic;
use cvm_attestation::workload::{WorkloadEvent, WorkloadFolder, WorkloadLog, WORKLOAD_PCR};
use cvm_attestation::Sha384Digest;
use cvm_attestation::{Evidence, Sha256Digest, VerificationReport};
use cvm_attester::tee::TeeBackend;
use cvm_attester::tpm::AZURE_AK_HANDLE;
use cvm_attester::{collect, AttestationKey, CollectRequest, Tpm};
use std::collections::BTreeMap;
use std::path::Path;
use test_support::{GoogleTestCa, NitroTestSigner, Swtpm};

pub const NONCE: &[u8] = b"verifier nonce 0001";

/// A running VM's TPM with the example workload measured into PCR 23.
pub struct Vm {
    _swtpm: Swtpm,
    pub tpm: Tpm,
    pub ak: AttestationKey,
    /// GCP: Google's (here a TEST-ONLY CA's) certificate for `ak`.
    pub ak_cert: Option<Vec<u8>>,
    pub log: WorkloadLog,
}

/// The example workload's events, optionally with another `config/message.txt`.
pub fn workload_events(config_override: Option<&str>) -> Vec<WorkloadEvent> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&source, dir.path());
    if let Some(text) = config_override {
        std::fs::write(dir.path().join("config/message.txt"), text).unwrap();
    }
    let ids = BTreeMap::from([(
        "localhost/cvm-example/hello:1".to_owned(),
        format!("sha256:{}", "ab".repeat(32)),
    )]);
    WorkloadFolder::read(dir.path())
        .unwrap()
        .events(&ids, None)
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl Vm {
    pub fn boot(events: Vec<WorkloadEvent>, persistent_ak: Option<u32>, rsa_ak: bool) -> Vm {
        let swtpm = Swtpm::start().unwrap();
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        if rsa_ak {
            tpm.provision_persistent_rsa_ak(AZURE_AK_HANDLE).unwrap();
        }
        for event in &events {
            tpm.extend_sha256(WORKLOAD_PCR, &event.extend_digest().0)
                .unwrap();
        }
        let ak = tpm.attestation_key(persistent_ak).unwrap();
        Vm {
            _swtpm: swtpm,
            tpm,
            ak,
            ak_cert: None,
            log: WorkloadLog::from_events(events),
        }
    }

    /// A GCE-like VM: its vTPM provisioned with an AK template and a certificate from `ca`, and
    /// the AK the agent's real code (`gce_attestation_key`) makes from them.
    pub fn boot_gce(events: Vec<WorkloadEvent>, ca: &GoogleTestCa) -> Vm {
        let swtpm = Swtpm::start().unwrap();
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        provision_gce_vtpm(
            &mut tpm,
            ca,
            &gce_instance(),
            &template(RSA_AK_TEMPLATE),
            (GCE_AK_TEMPLATE_NV_INDEX_RSA, GCE_AK_CERT_NV_INDEX_RSA),
            0,
        )
        .unwrap();
        for event in &events {
            tpm.extend_sha256(WORKLOAD_PCR, &event.extend_digest().0)
                .unwrap();
        }
        let (ak, cert) = cvm_attester::gce::gce_attestation_key(&mut tpm).unwrap();
        Vm {
            _swtpm: swtpm,
            tpm,
            ak,
            ak_cert: Some(cert),
            log: WorkloadLog::from_events(events),
        }
    }

    pub fn evidence(&mut self, tee: &mut dyn TeeBackend, cloud: Cloud, nonce: &[u8]) -> Evidence {
        self.evidence_with_tls(tee, cloud, nonce, None)
    }

    /// Evidence as an agent serving TLS with the key `tls_spki_sha256` produces it.
    pub fn evidence_with_tls(
        &mut self,
        tee: &mut dyn TeeBackend,
        cloud: Cloud,
        nonce: &[u8],
        tls_spki_sha256: Option<[u8; 32]>,
    ) -> Evidence {
        let platform = Platform {
            cloud,
            tee: tee.tee(),
        };
        let evidence = collect(
            &mut self.tpm,
            &self.ak,
            tee,
            CollectRequest {
                platform,
                nonce,
                tls_spki_sha256,
                workload_log: Some(self.log.clone()),
                firmware_log: None,
                ccel: None,
                ak_cert: self.ak_cert.clone(),
                nitro_document: false,
            },
        )
        .unwrap();
        // Through JSON, as a verifier receives it.
        Evidence::from_json(&serde_json::to_vec(&evidence).unwrap()).unwrap()
    }
}

/// Names of the failed checks.
pub fn failed(report: &VerificationReport) -> Vec<&str> {
    report.failures().map(|c| c.name.as_str()).collect()
}

/// Golden values for the harness VM: the boot chain PCRs 4, 9, 11, 12 (swtpm has no firmware and
/// nothing boots, so they stay zero, in both banks; a real image's build predicts them) and the
/// workload. Each test adds its TEE section.
pub fn golden_base(events: Vec<WorkloadEvent>) -> GoldenMeasurement {
    GoldenMeasurement {
        version: 1,
        platform: None,
        pcrs: [4u8, 9, 11, 12]
            .into_iter()
            .map(|index| {
                (
                    index,
                    GoldenPcr {
                        sha256: Sha256Digest([0; 32]),
                        sha384: Some(Sha384Digest([0; 48])),
                        source: PcrSource::Predicted,
                        note: None,
                    },
                )
            })
            .collect(),
        workload: Some(GoldenWorkload::new(events)),
        snp: None,
        tdx: None,
        boot_events: Vec::new(),
    }
}

/// TPMT_PUBLIC of an RSA AK template as GCE keeps it in NV 0x01c10001 (go-tpm-tools
/// `AKTemplateRSA`): RSA, nameAlg SHA-256, fixedTPM | fixedParent | sensitiveDataOrigin |
/// userWithAuth | noDA | restricted | sign, no policy, no symmetric, RSASSA-SHA256, 2048 bits,
/// default exponent, empty unique.
pub const RSA_AK_TEMPLATE: &str = "0001 000b 00050472 0000 0010 0014 000b 0800 00000000 0000";

/// The ECC counterpart (NV 0x01c10003): ECDSA-SHA256 on NIST P-256, no KDF, empty point.
pub const ECC_AK_TEMPLATE: &str = "0023 000b 00050472 0000 0010 0018 000b 0003 0010 0000 0000";

pub fn template(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text.replace(' ', "")).expect("template hex")
}

/// A GCE-like production instance for certificates.
pub fn gce_instance() -> GceInstance {
    GceInstance {
        zone: "us-central1-a".into(),
        project_id: "cvm-toolkit-test".into(),
        project_number: 995_081_019_036,
        instance_id: 6_524_697_943_022_743_941,
        instance_name: "confidential-1".into(),
        security: Some(GceSecurityProperties {
            security_version: Some(0),
            is_production: Some(true),
            other: vec![],
        }),
    }
}

/// Provisions `tpm` as GCE does: the template at `indices.0`, and at `indices.1` an AK
/// certificate `ca` issues for the key the template yields in the endorsement hierarchy
/// (followed by `padding` zero bytes, as some vTPMs pad NV certificates). Returns the certificate.
pub fn provision_gce_vtpm(
    tpm: &mut Tpm,
    ca: &GoogleTestCa,
    instance: &GceInstance,
    template: &[u8],
    indices: (u32, u32),
    padding: usize,
) -> anyhow::Result<Vec<u8>> {
    tpm.nv_provision(indices.0, template)?;
    let ak = tpm.create_primary_from_template(true, template)?;
    let key = AkPublic::from_tpmt_public(&ak.public)?.key;
    let certificate = ca.issue_ak_certificate(&key, Some(instance))?;
    let mut nv = certificate.clone();
    nv.resize(certificate.len() + padding, 0);
    tpm.nv_provision(indices.1, &nv)?;
    Ok(certificate)
}

/// What AWS's Nitro hypervisor adds (TEST-ONLY signer in its place): a NitroTPM document over
/// `pcrs` (SHA-384) naming the evidence's AK and quote, as the agent asks for it.
pub fn attach_nitro_document(
    evidence: &mut Evidence,
    signer: &NitroTestSigner,
    pcrs: &BTreeMap<u8, Vec<u8>>,
) {
    let user_data = nitro_user_data(
        evidence.tpm.ak_pub.as_slice(),
        &evidence.quote_qualifying_data(),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let document = signer.document(
        pcrs,
        Some(&user_data),
        Some(&evidence.bound_nonce()),
        None,
        now_ms,
    );
    evidence.tpm.nitro_document = Some(document.into());
}

/// NitroTPM PCRs matching [`golden_base`]'s boot chain (all zero in SHA-384).
pub fn nitro_boot_pcrs() -> BTreeMap<u8, Vec<u8>> {
    (0u8..24).map(|i| (i, vec![0u8; 48])).collect()
}

/// A TEST-ONLY root as the options name it.
pub fn named_root(name: &str, certificate: openssl::x509::X509) -> TrustedRoot {
    TrustedRoot {
        name: name.into(),
        certificate,
        test_only: true,
    }
}

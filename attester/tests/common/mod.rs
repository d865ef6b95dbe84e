//! The harness both full-path tests share: a software TPM with the example workload measured
//! into PCR 23, and evidence collected by the issuer code and passed through JSON.
#![allow(dead_code)]

use cvm_attestation::evidence::{Cloud, Platform};
use cvm_attestation::golden::{GoldenMeasurement, GoldenPcr, GoldenWorkload, PcrSource};
use cvm_attestation::workload::{WorkloadEvent, WorkloadFolder, WorkloadLog, WORKLOAD_PCR};
use cvm_attestation::{Evidence, Sha256Digest, VerificationReport};
use cvm_attester::tee::TeeBackend;
use cvm_attester::tpm::AZURE_AK_HANDLE;
use cvm_attester::{collect, AttestationKey, CollectRequest, Tpm};
use std::collections::BTreeMap;
use std::path::Path;
use test_support::Swtpm;

pub const NONCE: &[u8] = b"verifier nonce 0001";

/// A running VM's TPM with the example workload measured into PCR 23.
pub struct Vm {
    _swtpm: Swtpm,
    pub tpm: Tpm,
    pub ak: AttestationKey,
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

/// Golden values for the harness VM: PCR 0 (swtpm has no firmware, so it stays zero; a real image
/// lists PCR 4, 9, 11 here) and the workload. Each test adds its TEE section.
pub fn golden_base(events: Vec<WorkloadEvent>) -> GoldenMeasurement {
    GoldenMeasurement {
        version: 1,
        platform: None,
        pcrs: BTreeMap::from([(
            0,
            GoldenPcr {
                sha256: Sha256Digest([0; 32]),
                source: PcrSource::Observed,
                note: None,
            },
        )]),
        workload: Some(GoldenWorkload {
            events,
            allow_updates: false,
        }),
        snp: None,
        tdx: None,
    }
}

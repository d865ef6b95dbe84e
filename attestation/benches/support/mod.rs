//! Realistic evidence built without a TPM, shared by the `verify` benchmark and the property tests
//! (`tests/parsers_never_panic.rs` includes this file by path).
//!
//! The TPM's part is done by hand: an ECDSA P-256 (or RSA-2048 for Azure) attestation key
//! generated with openssl, its TPMT_PUBLIC, a TPMS_ATTEST quote over PCRs 0..=23 of the SHA-256
//! bank with our qualifying data, and a TPMT_SIGNATURE over it. SEV-SNP reports come from the
//! TEST-ONLY signer in `test-support`, whose root is trusted only because the options name it;
//! TD quotes likewise from its TDX signer.

#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cvm_attestation::eventlog::TcgLog;
use cvm_attestation::evidence::{
    Cloud, EventLogs, PcrBank, Platform, SnpEvidence, TdxEvidence, Tee, TpmEvidence,
    EVIDENCE_VERSION,
};
use cvm_attestation::gcp::{GceInstance, GceSecurityProperties};
use cvm_attestation::golden::{
    GoldenMeasurement, GoldenPcr, GoldenSnp, GoldenTdx, GoldenWorkload, PcrSource,
};
use cvm_attestation::snp::policy::Tcb;
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::TdxCollateral;
use cvm_attestation::tpm::{quote_qualifying_data, HashAlg};
use cvm_attestation::workload::{EventKind, WorkloadEvent, WorkloadLog};
use cvm_attestation::{Evidence, Sha256Digest, Sha384Digest, VerifyOptions};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use std::collections::BTreeMap;
use test_support::tdx_signer::{self, TdxTestSigner};
use test_support::{GoogleTestCa, SnpTestSigner};

pub const NONCE: &[u8] = b"benchmark nonce 0001";
pub const MEASUREMENT: [u8; 48] = [0x42; 48];
/// SMT allowed, reserved bit 17 set, debug off, no migration agent.
pub const POLICY: u64 = 0x3_0000;
/// 2030-01-01: inside the test signer's validity.
pub const AT: i64 = 1_893_456_000;
/// Offset of RTMR0 in a TD report body (quote layout): TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM,
/// SEAM and TD attributes, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG come first.
const TD_REPORT_RTMR0: usize = 16 + 48 + 48 + 8 + 8 + 8 + 48 * 4;

/// Which platform the evidence imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GCP/AWS: SNP report from `/dev/sev-guest` binding the AK and nonce, EC P-256 AK.
    GcpSnp,
    /// Azure: HCL report whose var_data holds an RSA-2048 AK.
    AzureSnp,
    /// Local QEMU without TEE: the caller pins the AK.
    Qemu,
}

/// Evidence with everything a verifier needs to accept it.
pub struct Fixture {
    pub evidence: Evidence,
    pub json: Vec<u8>,
    pub golden: GoldenMeasurement,
    pub golden_json: Vec<u8>,
    pub options: VerifyOptions,
    /// The AK's public key (for signature checks outside `verify`).
    pub ak_key: PKey<openssl::pkey::Public>,
    /// The AK's private key, which a TPM would never give out (for forging in attack tests).
    pub ak_private: PKey<Private>,
}

/// The attestation key, as a TPM would hold it.
struct Ak {
    key: PKey<Private>,
    tpmt_public: Vec<u8>,
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Pads a big-endian integer to `len` bytes.
fn fixed(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(bytes);
    out
}

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign.
const AK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);

fn ec_ak() -> Ak {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let (mut x, mut y) = (
        openssl::bn::BigNum::new().unwrap(),
        openssl::bn::BigNum::new().unwrap(),
    );
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let mut t = Vec::new();
    t.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    t.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg SHA-256
    t.extend_from_slice(&AK_ATTRIBUTES.to_be_bytes());
    tpm2b(&mut t, &[]); // authPolicy
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
    t.extend_from_slice(&0x0018u16.to_be_bytes()); // scheme: ECDSA
    t.extend_from_slice(&0x000bu16.to_be_bytes()); //   with SHA-256
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // curve: NIST P-256
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf: NULL
    tpm2b(&mut t, &fixed(&x.to_vec(), 32));
    tpm2b(&mut t, &fixed(&y.to_vec(), 32));
    Ak {
        key: PKey::from_ec_key(ec).unwrap(),
        tpmt_public: t,
    }
}

fn rsa_ak() -> Ak {
    let rsa = Rsa::generate(2048).unwrap();
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
    t.extend_from_slice(&0x000bu16.to_be_bytes());
    t.extend_from_slice(&AK_ATTRIBUTES.to_be_bytes());
    tpm2b(&mut t, &[]);
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
    t.extend_from_slice(&0x0014u16.to_be_bytes()); // scheme: RSASSA
    t.extend_from_slice(&0x000bu16.to_be_bytes()); //   with SHA-256
    t.extend_from_slice(&2048u16.to_be_bytes()); // keyBits
    t.extend_from_slice(&0u32.to_be_bytes()); // exponent: default
    tpm2b(&mut t, &rsa.n().to_vec());
    Ak {
        key: PKey::from_rsa(rsa).unwrap(),
        tpmt_public: t,
    }
}

/// The TPM name of a key: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC).
pub fn tpm_name(tpmt_public: &[u8]) -> Vec<u8> {
    let mut name = 0x000bu16.to_be_bytes().to_vec();
    name.extend_from_slice(&openssl::sha::sha256(tpmt_public));
    name
}

/// The production GCE instance the TEST-ONLY AK certificates name.
pub fn google_instance() -> GceInstance {
    GceInstance {
        zone: "europe-west4-a".into(),
        project_id: "cvm-bench".into(),
        project_number: 1_234_567,
        instance_id: 7_654_321,
        instance_name: "bench-1".into(),
        security: Some(GceSecurityProperties {
            security_version: Some(0),
            is_production: Some(true),
            other: vec![],
        }),
    }
}

/// Re-signs the fixture's quote after changing its qualifying data: what an attacker who holds
/// the key could do.
pub fn resign_quote(fixture: &mut Fixture, extra_data: &[u8]) {
    let pcrs: Vec<[u8; 32]> = fixture
        .evidence
        .tpm
        .pcrs
        .pcrs
        .values()
        .map(|v| v.as_slice().try_into().unwrap())
        .collect();
    let pcrs: [[u8; 32]; 24] = pcrs.try_into().unwrap();
    let quote = tpms_attest(
        &tpm_name(fixture.evidence.tpm.ak_pub.as_slice()),
        extra_data,
        &pcrs,
    );
    fixture.evidence.tpm.signature = Some(tpmt_signature(&fixture.ak_private, &quote).into());
    fixture.evidence.tpm.quote = quote.into();
}

/// TPMS_ATTEST of a quote over SHA-256 PCRs 0..=23.
pub fn tpms_attest(signer_name: &[u8], extra_data: &[u8], pcrs: &[[u8; 32]; 24]) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&0xff54_4347u32.to_be_bytes()); // TPM_GENERATED_VALUE
    q.extend_from_slice(&0x8018u16.to_be_bytes()); // TPM_ST_ATTEST_QUOTE
    tpm2b(&mut q, signer_name);
    tpm2b(&mut q, extra_data);
    q.extend_from_slice(&123_456_789u64.to_be_bytes()); // clock
    q.extend_from_slice(&3u32.to_be_bytes()); // resetCount
    q.extend_from_slice(&0u32.to_be_bytes()); // restartCount
    q.push(1); // safe
    q.extend_from_slice(&0x2023_0101_0000_0000u64.to_be_bytes()); // firmwareVersion
    q.extend_from_slice(&1u32.to_be_bytes()); // one selection
    q.extend_from_slice(&0x000bu16.to_be_bytes()); // SHA-256 bank
    q.extend_from_slice(&[3, 0xff, 0xff, 0xff]); // PCRs 0..=23
    let digest = openssl::sha::sha256(&pcrs.concat());
    tpm2b(&mut q, &digest);
    q
}

/// TPMT_SIGNATURE by `key` over `message` (ECDSA-SHA256 for EC keys, RSASSA-SHA256 for RSA).
fn tpmt_signature(key: &PKey<Private>, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(ec) = key.ec_key() {
        let sig = EcdsaSig::sign(&openssl::sha::sha256(message), &ec).unwrap();
        out.extend_from_slice(&0x0018u16.to_be_bytes());
        out.extend_from_slice(&0x000bu16.to_be_bytes());
        tpm2b(&mut out, &fixed(&sig.r().to_vec(), 32));
        tpm2b(&mut out, &fixed(&sig.s().to_vec(), 32));
    } else {
        let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
        signer.update(message).unwrap();
        let sig = signer.sign_to_vec().unwrap();
        out.extend_from_slice(&0x0014u16.to_be_bytes());
        out.extend_from_slice(&0x000bu16.to_be_bytes());
        tpm2b(&mut out, &sig);
    }
    out
}

/// The example workload's measurement.
pub fn workload_events() -> Vec<WorkloadEvent> {
    vec![
        WorkloadEvent::over(
            EventKind::ComposeFile,
            "docker-compose.yml",
            b"services:\n  hello:\n    image: localhost/cvm-example/hello:1\n    env_file: app.env\n",
        ),
        WorkloadEvent::over(EventKind::ConfigFile, "config/message.txt", b"hello\n"),
        WorkloadEvent::over(EventKind::EnvFile, "app.env", b"GREETING=hi\n"),
        WorkloadEvent::image(
            "localhost/cvm-example/hello:1",
            format!("sha256:{}", "ab".repeat(32)),
        ),
        WorkloadEvent::with_digest(EventKind::ApiToken, "api-token", Sha256Digest([7; 32])),
        WorkloadEvent::separator(),
    ]
}

/// Builds evidence that `verify` accepts, with its golden document and options.
pub fn fixture(kind: Kind) -> Fixture {
    fixture_with(kind, None)
}

/// The same, with the firmware's TCG2 event log `log` (SHA-256 bank) in the evidence: the quoted
/// PCRs the log extends are its replay (those of PCRs it does not touch stay as in [`fixture`]),
/// so the log is the one this "machine" wrote. Build one with `test_support::tcg_log`.
pub fn fixture_with_firmware_log(kind: Kind, log: Vec<u8>) -> Fixture {
    fixture_with(kind, Some(log))
}

/// PCRs 0..=15 distinct, 23 the workload's, and whatever `firmware_log` replays to.
fn quoted_pcrs(log: &WorkloadLog, firmware_log: Option<&[u8]>) -> [[u8; 32]; 24] {
    let mut pcrs = [[0u8; 32]; 24];
    for (i, pcr) in pcrs.iter_mut().enumerate().take(16) {
        *pcr = openssl::sha::sha256(&[i as u8]);
    }
    if let Some(bytes) = firmware_log {
        let replayed = TcgLog::parse(bytes)
            .expect("a firmware log the fixture can replay")
            .replay(HashAlg::Sha256);
        for (index, value) in replayed {
            if index < 23 {
                pcrs[index as usize] = value.try_into().unwrap();
            }
        }
    }
    pcrs[23] = log.replay().0;
    pcrs
}

fn fixture_with(kind: Kind, firmware_log: Option<Vec<u8>>) -> Fixture {
    let signer = SnpTestSigner::new().unwrap();
    let ak = if kind == Kind::AzureSnp {
        rsa_ak()
    } else {
        ec_ak()
    };
    let events = workload_events();
    let log = WorkloadLog::from_events(events.clone());

    let pcrs = quoted_pcrs(&log, firmware_log.as_deref());

    let (platform, sev_snp, var_data) = match kind {
        Kind::GcpSnp => {
            let data = cvm_attestation::binding::report_data(&ak.tpmt_public, NONCE);
            let report = signer.report(&data, &MEASUREMENT, POLICY).unwrap();
            (
                Platform {
                    cloud: Cloud::Gcp,
                    tee: Tee::SevSnp,
                },
                Some(SnpEvidence {
                    attestation_report: report.into(),
                    vek_cert: signer.vcek_der().into(),
                    cert_chain: vec![signer.ask_der().into()],
                    hcl_report: None,
                }),
                None,
            )
        }
        Kind::AzureSnp => {
            let rsa = ak.key.rsa().unwrap();
            let var_data = serde_json::to_vec(&serde_json::json!({
                "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                          "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
                          "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec())}],
                "vm-configuration": {"secure-boot": true, "tpm-enabled": true}
            }))
            .unwrap();
            let hcl = signer.hcl_report(&var_data, &MEASUREMENT, POLICY).unwrap();
            (
                Platform {
                    cloud: Cloud::Azure,
                    tee: Tee::SevSnp,
                },
                Some(SnpEvidence {
                    attestation_report: hcl[0x20..0x20 + 1184].to_vec().into(),
                    vek_cert: signer.vcek_der().into(),
                    cert_chain: vec![signer.ask_der().into()],
                    hcl_report: Some(hcl.into()),
                }),
                Some(var_data.into()),
            )
        }
        Kind::Qemu => (
            Platform {
                cloud: Cloud::Qemu,
                tee: Tee::None,
            },
            None,
            None,
        ),
    };

    // The quote binds the TEE report the agent asked for itself (GCP, AWS).
    let report = cvm_attestation::evidence::tee_report_bound_by_quote(sev_snp.as_ref(), None);
    let quote = tpms_attest(
        &tpm_name(&ak.tpmt_public),
        &quote_qualifying_data(NONCE, report),
        &pcrs,
    );
    let signature = tpmt_signature(&ak.key, &quote);
    // GCP's trust basis: Google's (here a TEST-ONLY CA's) certificate for the AK.
    let google = (kind == Kind::GcpSnp).then(|| GoogleTestCa::new().unwrap());
    let ak_cert = google.as_ref().map(|ca| {
        let public = PKey::public_key_from_der(&ak.key.public_key_to_der().unwrap()).unwrap();
        ca.issue_ak_certificate(&public, Some(&google_instance()))
            .unwrap()
            .into()
    });

    let evidence = Evidence {
        version: Some(EVIDENCE_VERSION),
        platform: Some(platform),
        nonce: NONCE.into(),
        tls_spki_sha256: None,
        sev_snp,
        tdx: None,
        tpm: TpmEvidence {
            quote: quote.into(),
            raw_sig: None,
            signature: Some(signature.into()),
            pcrs: PcrBank {
                hash: HashAlg::Sha256,
                pcrs: pcrs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as u8, v.to_vec().into()))
                    .collect(),
            },
            ak_pub: ak.tpmt_public.clone().into(),
            ak_cert,
            nitro_document: None,
            var_data,
        },
        event_logs: EventLogs {
            firmware: firmware_log.map(Into::into),
            workload: Some(log),
            ccel: None,
        },
    };
    let json = serde_json::to_vec(&evidence).unwrap();

    let golden = GoldenMeasurement {
        version: 1,
        platform: Some(platform),
        pcrs: [0u8, 4, 9, 11]
            .into_iter()
            .map(|i| {
                (
                    i,
                    GoldenPcr {
                        sha256: Sha256Digest(pcrs[usize::from(i)]),
                        sha384: None,
                        source: PcrSource::Predicted,
                        note: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        workload: Some(GoldenWorkload::new(events)),
        snp: (kind != Kind::Qemu).then(|| GoldenSnp {
            measurements: vec![Sha384Digest(MEASUREMENT)],
            minimum_tcb: Some(Tcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: None,
            }),
            allow_debug: false,
            allow_migration_agent: false,
            vmpls: vec![0],
        }),
        tdx: None,
        boot_events: Vec::new(),
    };
    let golden_json = serde_json::to_vec(&golden).unwrap();

    let mut options = VerifyOptions::new(AT)
        .with_nonce(NONCE)
        .with_test_roots([TrustedRoot {
            name: "TEST-ONLY bench signer".into(),
            certificate: signer.ark().clone(),
            test_only: true,
        }]);
    if kind == Kind::Qemu {
        options = options.with_trusted_ak(ak.tpmt_public.clone());
    }
    if let Some(ca) = &google {
        options = options.with_gcp_test_ca(ca.trusted_root(), ca.intermediate_der());
    }
    let ak_key = PKey::public_key_from_der(&ak.key.public_key_to_der().unwrap()).unwrap();
    Fixture {
        evidence,
        json,
        golden,
        golden_json,
        options,
        ak_key,
        ak_private: ak.key,
    }
}

/// GCP TDX evidence that `verify` accepts: a TD quote from the TEST-ONLY TDX signer whose
/// report_data binds the AK and nonce and whose RTMR0-3 are the replay of the CC event log
/// `ccel` (SHA-384; register index 1..=4 = RTMR0..3), that log in `event_logs.ccel`, and a vTPM
/// quote (AK certified by a TEST-ONLY Google CA) binding the TD quote. Its golden pins the MRTD,
/// MRSEAM and workload, not the boot chain (tests add that).
pub fn gcp_tdx_fixture(ccel: Vec<u8>) -> Fixture {
    let signer = TdxTestSigner::new().unwrap();
    let ak = ec_ak();
    let events = workload_events();
    let log = WorkloadLog::from_events(events.clone());
    let pcrs = quoted_pcrs(&log, None);
    let platform = Platform {
        cloud: Cloud::Gcp,
        tee: Tee::Tdx,
    };

    let mut body = signer.body(&cvm_attestation::binding::report_data(
        &ak.tpmt_public,
        NONCE,
    ));
    let rtmrs = TcgLog::parse(&ccel)
        .expect("a CC event log the fixture can replay")
        .replay(HashAlg::Sha384);
    for rtmr in 0..4 {
        let value = rtmrs
            .get(&(rtmr as u32 + 1))
            .cloned()
            .unwrap_or_else(|| vec![0; 48]);
        let at = TD_REPORT_RTMR0 + 48 * rtmr;
        body[at..at + 48].copy_from_slice(&value);
    }
    let td_quote = signer.quote(&body).unwrap();
    let quote = tpms_attest(
        &tpm_name(&ak.tpmt_public),
        &quote_qualifying_data(NONCE, Some(&td_quote)),
        &pcrs,
    );
    let signature = tpmt_signature(&ak.key, &quote);
    let google = GoogleTestCa::new().unwrap();
    let public = PKey::public_key_from_der(&ak.key.public_key_to_der().unwrap()).unwrap();
    let ak_cert = google
        .issue_ak_certificate(&public, Some(&google_instance()))
        .unwrap();

    let evidence = Evidence {
        version: Some(EVIDENCE_VERSION),
        platform: Some(platform),
        nonce: NONCE.into(),
        tls_spki_sha256: None,
        sev_snp: None,
        tdx: Some(TdxEvidence {
            quote: td_quote.into(),
            collateral: None,
            hcl_report: None,
        }),
        tpm: TpmEvidence {
            quote: quote.into(),
            raw_sig: None,
            signature: Some(signature.into()),
            pcrs: PcrBank {
                hash: HashAlg::Sha256,
                pcrs: pcrs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as u8, v.to_vec().into()))
                    .collect(),
            },
            ak_pub: ak.tpmt_public.clone().into(),
            ak_cert: Some(ak_cert.into()),
            nitro_document: None,
            var_data: None,
        },
        event_logs: EventLogs {
            firmware: None,
            workload: Some(log),
            ccel: Some(ccel.into()),
        },
    };
    let json = serde_json::to_vec(&evidence).unwrap();
    let golden = GoldenMeasurement {
        version: 1,
        platform: Some(platform),
        pcrs: BTreeMap::new(),
        workload: Some(GoldenWorkload::new(events)),
        snp: None,
        tdx: Some(GoldenTdx {
            mrtds: vec![Sha384Digest(tdx_signer::MRTD)],
            mrseams: vec![Sha384Digest(tdx_signer::MRSEAM)],
            ..GoldenTdx::default()
        }),
        boot_events: Vec::new(),
    };
    let golden_json = serde_json::to_vec(&golden).unwrap();
    let collateral = TdxCollateral::from_json(&signer.collateral_json().unwrap()).unwrap();
    let options = VerifyOptions::new(AT)
        .with_nonce(NONCE)
        .with_tdx_test_roots([TrustedRoot {
            name: "TEST-ONLY TDX signer".into(),
            certificate: signer.root().clone(),
            test_only: true,
        }])
        .with_tdx_collateral(collateral)
        .with_gcp_test_ca(google.trusted_root(), google.intermediate_der());
    Fixture {
        evidence,
        json,
        golden,
        golden_json,
        options,
        ak_key: public,
        ak_private: ak.key,
    }
}

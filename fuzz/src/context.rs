//! Fixed, real inputs the targets combine with the fuzzed one: keys and certificates to verify
//! with, a real TD quote and its collateral, real Azure evidence and a golden for it. Built once
//! per process from `shared/vectors` (read at compile time, never copied into the repo).

use cvm_attestation::encoding::Bytes;
use cvm_attestation::evidence::{
    Cloud, EventLogs, PcrBank, Platform, SnpEvidence, TdxEvidence, Tee, TpmEvidence,
};
use cvm_attestation::golden::{GoldenBootEvent, GoldenMeasurement, GoldenSnp, GoldenTdx};
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::tdx::x509::IntelCert;
use cvm_attestation::tdx::{TdQuote, TdxCollateral};
use cvm_attestation::tpm::HashAlg;
use cvm_attestation::{Evidence, Sha256Digest, Sha384Digest, VerifyOptions};
use openssl::pkey::{PKey, Public};
use std::sync::OnceLock;

macro_rules! vector {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/",
            $path
        ))
    };
}
pub(crate) use vector;

/// 2025-07-01: inside the real TDX collateral's validity.
pub const TDX_AT: i64 = 1_751_328_000;
/// 2024-06-01: inside the Milan VCEKs' validity.
pub const SNP_AT: i64 = 1_717_200_000;
/// The nonce of the real Azure vTPM quote.
pub const AZURE_NONCE: &[u8] = b"challenge";

/// Everything the targets verify against.
pub struct Context {
    /// The key of the VCEK that signed `virtee-sev/report_milan`.
    pub milan_key: PKey<Public>,
    /// Real VCEK/VLEK certificates (DER).
    pub vek_certs: Vec<Vec<u8>>,
    pub tdx_quote: Vec<u8>,
    pub tdx_collateral: TdxCollateral,
    /// The real PCK Platform CA (the signer of the real PCK CRL).
    pub intel_pck_ca: IntelCert,
    /// Real Azure SEV-SNP evidence (trustee's HCL report and vTPM quote) and a golden for it.
    pub azure_evidence: Evidence,
    pub azure_golden: GoldenMeasurement,
    /// Real TDX evidence (the real quote) and a golden pinning its MRTD and boot events.
    pub tdx_evidence: Evidence,
    pub tdx_golden: GoldenMeasurement,
}

/// The context, built on first use.
pub fn context() -> &'static Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    CONTEXT.get_or_init(build)
}

fn build() -> Context {
    let milan = parse_certificate(vector!("virtee-sev/vcek_milan.der")).expect("real VCEK");
    let vek_certs = vec![
        vector!("virtee-sev/vcek_milan.der").to_vec(),
        vector!("trustee/snp-test-vlek.der").to_vec(),
        vector!("derived/v2-vcek.der").to_vec(),
    ];
    let tdx_collateral = TdxCollateral::from_json(vector!("tdx/tdx_quote_collateral.json"))
        .expect("real collateral");
    let (tdx_evidence, tdx_golden) = tdx_pair(&tdx_collateral);
    let pck_ca =
        openssl::x509::X509::stack_from_pem(tdx_collateral.pck_crl_issuer_chain.as_bytes())
            .expect("real chain")[0]
            .to_der()
            .expect("DER");
    let intel_pck_ca = IntelCert::from_der(&pck_ca).expect("real PCK Platform CA");
    let (azure_evidence, azure_golden) = azure_pair();
    Context {
        milan_key: milan.public_key().expect("VCEK key"),
        vek_certs,
        tdx_quote: vector!("tdx/tdx_quote").to_vec(),
        tdx_collateral,
        intel_pck_ca,
        azure_evidence,
        azure_golden,
        tdx_evidence,
        tdx_golden,
    }
}

/// Options for verifying the Azure pair (and any fuzzed evidence).
pub fn azure_options() -> VerifyOptions {
    VerifyOptions::new(SNP_AT).with_nonce(AZURE_NONCE)
}

/// Options for verifying the TDX pair: the real collateral, at a time inside its validity.
pub fn tdx_options() -> VerifyOptions {
    VerifyOptions::new(TDX_AT).with_tdx_collateral(context().tdx_collateral.clone())
}

/// The Azure vTPM quote trustee recorded with its HCL report: (TPMS_ATTEST, raw signature, PCRs).
pub fn azure_quote() -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let json: serde_json::Value =
        serde_json::from_slice(vector!("trustee/az-snp-tpm-quote-v1.json")).expect("quote JSON");
    let hex_field = |name: &str| hex::decode(json[name].as_str().unwrap_or_default()).unwrap();
    let pcrs = json["pcrs"]
        .as_array()
        .map(|pcrs| {
            pcrs.iter()
                .map(|p| hex::decode(p.as_str().unwrap_or_default()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    (hex_field("message"), hex_field("signature"), pcrs)
}

fn azure_pair() -> (Evidence, GoldenMeasurement) {
    let hcl = vector!("trustee/az-snp-hcl-report.bin");
    let parsed = cvm_attestation::azure::HclReport::parse(hcl).expect("real HCL report");
    let chain = parse_pem_chain(vector!("trustee/az-snp-vcek-chain.pem")).expect("real chain");
    let der = |i: usize| Bytes::from(chain[i].to_der().expect("DER"));
    let (quote, signature, pcrs) = azure_quote();
    let evidence = Evidence {
        version: Some(cvm_attestation::evidence::EVIDENCE_VERSION),
        platform: Some(Platform {
            cloud: Cloud::Azure,
            tee: Tee::SevSnp,
        }),
        nonce: AZURE_NONCE.into(),
        tls_spki_sha256: None,
        sev_snp: Some(SnpEvidence {
            attestation_report: parsed.hardware_report.into(),
            vek_cert: der(0),
            cert_chain: (1..chain.len()).map(der).collect(),
            hcl_report: Some(hcl.as_slice().into()),
        }),
        tdx: None,
        tpm: tpm_evidence(quote, Some(signature), &pcrs, Some(parsed.var_data)),
        event_logs: EventLogs::default(),
    };
    let report = cvm_attestation::snp::SnpReport::parse(parsed.hardware_report).expect("report");
    let golden = GoldenMeasurement {
        snp: Some(GoldenSnp {
            measurements: vec![Sha384Digest(report.fields.measurement)],
            ..GoldenSnp::default()
        }),
        pcrs: pcrs
            .iter()
            .enumerate()
            .take(8)
            .filter_map(|(i, v)| Some((i as u8, golden_pcr(v)?)))
            .collect(),
        ..empty_golden()
    };
    (evidence, golden)
}

fn tdx_pair(collateral: &TdxCollateral) -> (Evidence, GoldenMeasurement) {
    let quote = vector!("tdx/tdx_quote");
    let body = TdQuote::parse(quote).expect("real TD quote").body;
    let (tpm_quote, signature, pcrs) = azure_quote();
    let evidence = Evidence {
        version: Some(cvm_attestation::evidence::EVIDENCE_VERSION),
        platform: Some(Platform {
            cloud: Cloud::Gcp,
            tee: Tee::Tdx,
        }),
        nonce: AZURE_NONCE.into(),
        tls_spki_sha256: None,
        sev_snp: None,
        tdx: Some(TdxEvidence {
            quote: quote.as_slice().into(),
            collateral: Some(collateral.clone()),
            hcl_report: None,
        }),
        tpm: tpm_evidence(tpm_quote, Some(signature), &pcrs, None),
        event_logs: EventLogs::default(),
    };
    let golden = GoldenMeasurement {
        tdx: Some(GoldenTdx {
            mrtds: vec![Sha384Digest(body.mrtd)],
            ..GoldenTdx::default()
        }),
        boot_events: vec![GoldenBootEvent {
            pcr: 4,
            sha256: Sha256Digest([0x44; 32]),
            sha384: Some(Sha384Digest([0x44; 48])),
            description: "UKI".into(),
        }],
        ..empty_golden()
    };
    (evidence, golden)
}

fn tpm_evidence(
    quote: Vec<u8>,
    raw_sig: Option<Vec<u8>>,
    pcrs: &[Vec<u8>],
    var_data: Option<&[u8]>,
) -> TpmEvidence {
    TpmEvidence {
        quote: quote.into(),
        raw_sig: raw_sig.map(Bytes::from),
        signature: None,
        pcrs: PcrBank {
            hash: HashAlg::Sha256,
            pcrs: pcrs
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u8, v.clone().into()))
                .collect(),
        },
        ak_pub: azure_ak_pem().into(),
        ak_cert: None,
        nitro_document: None,
        var_data: var_data.map(Bytes::from),
    }
}

/// The Azure vTPM AK (PEM) of the HCL report's var_data, as `tpm.ak_pub` carries it.
fn azure_ak_pem() -> Vec<u8> {
    let hcl = cvm_attestation::azure::HclReport::parse(vector!("trustee/az-snp-hcl-report.bin"))
        .expect("real HCL report");
    let key = cvm_attestation::azure::ak_from_var_data(hcl.var_data).expect("real var_data AK");
    key.public_key_to_pem().expect("PEM")
}

fn golden_pcr(value: &[u8]) -> Option<cvm_attestation::golden::GoldenPcr> {
    Some(cvm_attestation::golden::GoldenPcr {
        sha256: Sha256Digest::from_slice(value).ok()?,
        sha384: None,
        source: cvm_attestation::golden::PcrSource::Observed,
        note: None,
    })
}

fn empty_golden() -> GoldenMeasurement {
    GoldenMeasurement {
        version: cvm_attestation::golden::GOLDEN_VERSION,
        platform: None,
        pcrs: Default::default(),
        workload: None,
        snp: None,
        tdx: None,
        boot_events: Vec::new(),
    }
}

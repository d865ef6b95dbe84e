//! `verify(evidence, golden, options) -> report`: every check by name, no I/O.
//!
//! In passes: policy on the golden document and freshness; the TEE report and its chain; how the
//! AK is trusted (`ak::AkBinding`, decided once per platform); the quote, whose PCR values become
//! verified facts only under a trusted AK; then the golden values against those facts. Later
//! checks still run when an earlier one fails, so a report shows everything wrong at once, but
//! nothing unverified ever feeds a later comparison.

mod ak;
mod aws;
mod boot;
mod gcp;
mod policy;
mod report;
mod snp;
mod tdx;
mod tpm;
mod workload;

pub use ak::AkBinding;
pub use report::{Check, Status, VerificationReport};

use crate::evidence::{Evidence, Tee};
use crate::golden::GoldenMeasurement;
use crate::snp::{amd_roots, TrustedRoot};
use report::{Checks, Claim};
use std::collections::BTreeMap;

/// Whether the evidence must answer a fresh nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    /// Without an expected nonce, `nonce` fails (the default).
    #[default]
    Required,
    /// The caller knowingly accepts evidence that may be replayed (`--no-freshness`): `nonce`
    /// is then a SKIP that says so.
    Waived,
}

/// What the caller decides, explicitly.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Time at which certificates must be valid (Unix seconds).
    pub at_unix: i64,
    /// The nonce the caller sent. Without it, `nonce` fails unless freshness is waived.
    pub expected_nonce: Option<Vec<u8>>,
    pub freshness: Freshness,
    /// Trust anchors for SEV-SNP: AMD's pinned ARKs unless the caller names others.
    pub snp_roots: Vec<TrustedRoot>,
    /// AMD's CRLs (DER, from KDS `/vcek/v1/{product}/crl`): when given, the ASK/ASVK must not be
    /// revoked by the one its ARK signed.
    pub amd_crls: Vec<Vec<u8>>,
    /// Trust anchors for Intel TDX (DCAP): Intel's pinned SGX Root CA unless the caller names
    /// others.
    pub tdx_roots: Vec<TrustedRoot>,
    /// TDX collateral (TCB info, QE identity, CRLs) the verifier supplies: always used in place of
    /// any the evidence carries (which comes from the machine being judged).
    pub tdx_collateral: Option<crate::tdx::TdxCollateral>,
    /// Trust anchors for GCP's vTPM AK certificates: Google's EK/AK CA root, pinned.
    pub gcp_roots: Vec<TrustedRoot>,
    /// Further intermediates (DER) for GCP AK certificates, e.g. a TEST-ONLY CA's; each counts
    /// only when one of `gcp_roots` signed it (Google's real intermediate is pinned in the code).
    pub gcp_intermediates: Vec<Vec<u8>>,
    /// Trust anchors for AWS NitroTPM attestation documents: AWS Nitro root G1, pinned.
    pub nitro_roots: Vec<TrustedRoot>,
    /// For platforms without a TEE (local QEMU): the AK public key (as carried in `tpm.ak_pub`)
    /// that the caller recorded when it created the VM's TPM. Nothing else can vouch for it.
    pub trusted_ak: Option<Vec<u8>>,
    /// SHA-256 of the TLS key (SPKI DER) of the connection the evidence was fetched over: the
    /// evidence must bind exactly this key.
    pub expected_tls_key: Option<[u8; 32]>,
}

impl VerifyOptions {
    /// AMD's roots, certificates checked at `at_unix`, no nonce, no pinned AK.
    pub fn new(at_unix: i64) -> Self {
        Self {
            at_unix,
            expected_nonce: None,
            freshness: Freshness::Required,
            snp_roots: amd_roots(),
            amd_crls: Vec::new(),
            tdx_roots: crate::tdx::intel_roots(),
            tdx_collateral: None,
            gcp_roots: crate::gcp::google_ak_roots(),
            gcp_intermediates: Vec::new(),
            nitro_roots: crate::nitro::aws_nitro_roots(),
            trusted_ak: None,
            expected_tls_key: None,
        }
    }

    /// Now, by the system clock.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self::new(now)
    }

    pub fn with_nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.expected_nonce = Some(nonce.into());
        self
    }

    /// Adds test-only roots. They are trusted only because the caller named them here, and every
    /// report that relies on one says so.
    pub fn with_test_roots(mut self, roots: impl IntoIterator<Item = TrustedRoot>) -> Self {
        self.snp_roots.extend(roots.into_iter().map(|mut root| {
            root.test_only = true;
            root
        }));
        self
    }

    /// Adds test-only TDX roots (in place of Intel's SGX Root CA for test signers). Trusted only
    /// because the caller named them here, and every report that relies on one says so.
    pub fn with_tdx_test_roots(mut self, roots: impl IntoIterator<Item = TrustedRoot>) -> Self {
        self.tdx_roots.extend(roots.into_iter().map(|mut root| {
            root.test_only = true;
            root
        }));
        self
    }

    /// Adds a TEST-ONLY CA in place of Google's EK/AK CA root (named in every report).
    pub fn with_gcp_test_roots(mut self, roots: impl IntoIterator<Item = TrustedRoot>) -> Self {
        self.gcp_roots.extend(roots.into_iter().map(|mut root| {
            root.test_only = true;
            root
        }));
        self
    }

    /// Adds a TEST-ONLY CA (root and the intermediate that issues AK certificates) in place of
    /// Google's EK/AK CA (named in every report).
    pub fn with_gcp_test_ca(mut self, root: TrustedRoot, intermediate_der: Vec<u8>) -> Self {
        self.gcp_intermediates.push(intermediate_der);
        self.with_gcp_test_roots([root])
    }

    /// Adds a TEST-ONLY root in place of AWS Nitro root G1 (named in every report).
    pub fn with_nitro_test_roots(mut self, roots: impl IntoIterator<Item = TrustedRoot>) -> Self {
        self.nitro_roots.extend(roots.into_iter().map(|mut root| {
            root.test_only = true;
            root
        }));
        self
    }

    /// The verifier's TDX collateral: used in place of any the evidence carries.
    pub fn with_tdx_collateral(mut self, collateral: crate::tdx::TdxCollateral) -> Self {
        self.tdx_collateral = Some(collateral);
        self
    }

    /// Accepts evidence without a nonce (reported as a loud SKIP, never as a pass).
    pub fn without_freshness(mut self) -> Self {
        self.freshness = Freshness::Waived;
        self
    }

    pub fn with_trusted_ak(mut self, ak_pub: impl Into<Vec<u8>>) -> Self {
        self.trusted_ak = Some(ak_pub.into());
        self
    }
}

/// Values established by earlier checks and used by later ones.
#[derive(Default)]
pub(crate) struct Facts {
    /// Quoted SHA-256 PCR values, when the quote verified (index -> value).
    pub quoted_pcrs: Option<BTreeMap<u8, Vec<u8>>>,
    /// PCR indices the quote covers in the SHA-256 bank.
    pub quoted_selection: Vec<u8>,
    /// TDX: RTMR3 of the TD quote, set only when the quote's PCK chain and signatures verified.
    pub rtmr3: Option<[u8; 48]>,
}

/// Verifies a bare SEV-SNP report, or an Azure HCL report (detected by its "HCLA" magic, whose
/// `var_data` binding is then checked too), against AMD's chain: the `snpguest verify
/// attestation` job. `cert_chain` holds intermediates (DER); built-in ASKs are tried as well.
pub fn verify_snp_report(
    report_or_hcl: &[u8],
    vek_cert: &[u8],
    cert_chain: &[crate::encoding::Bytes],
    expectations: &crate::golden::GoldenSnp,
    options: &VerifyOptions,
) -> VerificationReport {
    let mut checks = Checks::default();
    let mut report_bytes = report_or_hcl;
    let mut var_data = None;
    if report_or_hcl.starts_with(b"HCLA") {
        match crate::azure::HclReport::parse(report_or_hcl) {
            Ok(hcl) => {
                checks.pass("azure.hcl_report", "HCL report parsed");
                report_bytes = hcl.hardware_report;
                var_data = Some(hcl.var_data);
            }
            Err(e) => checks.fail("azure.hcl_report", e.to_string()),
        }
    }
    match crate::snp::SnpReport::parse(report_bytes) {
        Ok(report) => {
            checks.pass(
                "snp.report",
                format!("SNP report version {} parsed", report.fields.version),
            );
            snp::check_report(
                &report,
                vek_cert,
                cert_chain,
                expectations,
                options,
                &mut checks,
            );
            if let Some(var_data) = var_data {
                checks.compare(
                    "snp.report_data",
                    crate::binding::azure_var_data_bound(report.report_data(), var_data),
                    Claim::new(
                        "report_data[0..32] is SHA-256(var_data)",
                        "report_data[0..32] is not SHA-256(var_data): the report does not vouch \
                         for this var_data",
                    ),
                    hex::encode(openssl::sha::sha256(var_data)),
                    hex::encode(&report.report_data()[..32]),
                );
            }
        }
        Err(e) => checks.fail("snp.report", e.to_string()),
    }
    checks.finish("sev-snp report".into())
}

/// Verifies a bare TD quote (v4 or v5) with the collateral in `options` (or the one given with
/// the quote, when the verifier has none) against Intel's pinned root: the DCAP checks from
/// `tdx.quote` to `tdx.mrservicetd`, no binding.
pub fn verify_tdx_quote(
    quote: &[u8],
    collateral: Option<&crate::tdx::TdxCollateral>,
    expectations: &crate::golden::GoldenTdx,
    options: &VerifyOptions,
) -> VerificationReport {
    let mut checks = Checks::default();
    match crate::tdx::TdQuote::parse(quote) {
        Ok(parsed) => {
            checks.pass("tdx.quote", format!("{} parsed", parsed.describe()));
            // The verifier's own collateral wins over one that came with the quote.
            let collateral = match (&options.tdx_collateral, collateral) {
                (Some(c), _) => Some((c, "supplied by the verifier")),
                (None, Some(c)) => Some((c, "given with the quote")),
                (None, None) => None,
            };
            tdx::check_quote(&parsed, collateral, expectations, options, &mut checks);
        }
        Err(e) => checks.fail("tdx.quote", e.to_string()),
    }
    checks.finish("tdx quote".into())
}

/// The firmware's event log must explain the quoted values of PCRs 0-7, which only firmware
/// extends. Later PCRs may be extended by the OS after boot services end (e.g. systemd into 11),
/// so for them the reason only says which the log explains.
fn firmware_log(bytes: &[u8], facts: &Facts, checks: &mut Checks) {
    let log = match crate::eventlog::TcgLog::parse(bytes) {
        Ok(log) => log,
        Err(e) => return checks.fail("eventlog.firmware", e.to_string()),
    };
    let Some(quoted) = &facts.quoted_pcrs else {
        return checks.fail(
            "eventlog.firmware",
            "no verified quote to compare the firmware log with",
        );
    };
    let replayed = log.replay(crate::tpm::HashAlg::Sha256);
    let (mut explained, mut unexplained, mut later) = (Vec::new(), Vec::new(), Vec::new());
    for (&index, value) in &replayed {
        let matches = u8::try_from(index).ok().and_then(|i| quoted.get(&i)) == Some(value);
        match (index <= 7, matches) {
            (true, true) | (false, true) => explained.push(index.to_string()),
            (true, false) => unexplained.push(index.to_string()),
            (false, false) => later.push(index.to_string()),
        }
    }
    if unexplained.is_empty() {
        let mut reason = format!(
            "{} events replay to the quoted values of PCR {}",
            log.events.len(),
            explained.join(", ")
        );
        if !later.is_empty() {
            reason.push_str(&format!(
                "; PCR {} were extended after boot services too",
                later.join(", ")
            ));
        }
        checks.pass("eventlog.firmware", reason);
    } else {
        checks.fail(
            "eventlog.firmware",
            format!(
                "the firmware event log does not explain the quoted PCR {}",
                unexplained.join(", ")
            ),
        );
    }
}

/// Runs every check and returns the report.
pub fn verify(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
) -> VerificationReport {
    let mut checks = Checks::default();
    let platform = evidence.platform();

    policy::golden_coverage(golden, evidence, &mut checks);
    policy::freshness(evidence, options, &mut checks);
    tls_key(evidence, options, &mut checks);
    match golden.platform {
        Some(expected) => checks.compare(
            "platform",
            expected == platform,
            Claim::new(
                "the evidence comes from the platform the golden measurement is for",
                "the evidence comes from another platform than the golden measurement is for",
            ),
            expected.to_string(),
            platform.to_string(),
        ),
        None => checks.skip(
            "platform",
            format!("the golden measurement names no platform; the evidence says {platform}"),
        ),
    }

    // The TEE first: the AK's trust basis may rest on it (Azure's var_data).
    let (ak, trusted) = ak::decide(evidence, golden, options, &mut checks);
    let mut facts = Facts::default();
    match platform.tee {
        Tee::SevSnp => snp::verify(evidence, golden, options, ak.as_ref(), &mut checks),
        Tee::Tdx => facts.rtmr3 = tdx::verify(evidence, golden, options, &mut checks),
        Tee::None => {}
    }

    if let Some(ak) = &ak {
        tpm::verify_quote(evidence, ak, trusted.is_some(), &mut checks, &mut facts);
    }
    tpm::check_golden_pcrs(golden, &facts, &mut checks);
    workload::verify(evidence, golden, &facts, &mut checks);
    if let Some(log) = &evidence.event_logs.firmware {
        firmware_log(log.as_slice(), &facts, &mut checks);
    }
    boot::verify(evidence, golden, &facts, &mut checks);
    checks.finish(platform.to_string())
}

/// The TLS key the evidence binds against the connection's.
fn tls_key(evidence: &Evidence, options: &VerifyOptions, checks: &mut Checks) {
    match (options.expected_tls_key, evidence.tls_key()) {
        (Some(expected), actual) => checks.compare(
            "tls.key",
            Some(expected) == actual,
            Claim::new(
                "the evidence binds the TLS key of the connection it came over",
                "the evidence does not bind the TLS key of the connection it came over (a \
                 relayed or substituted connection)",
            ),
            hex::encode(expected),
            actual.map(hex::encode).unwrap_or_else(|| "none".into()),
        ),
        (None, Some(actual)) => checks.skip(
            "tls.key",
            format!(
                "the evidence binds TLS key {}; no connection to compare it with",
                hex::encode(actual)
            ),
        ),
        (None, None) => {}
    }
}

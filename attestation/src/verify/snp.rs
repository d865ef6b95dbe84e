//! SEV-SNP checks: the report, AMD's chain to a pinned root, the signing key's fit to the report,
//! guest policy, TCB, launch measurement, and how `report_data` binds the AK and nonce.

use super::report::{Checks, Claim};
use super::tpm::azure_var_data;
use super::VerifyOptions;
use crate::azure::HclReport;
use crate::binding;
use crate::encoding::Bytes;
use crate::evidence::{Cloud, Evidence, SnpEvidence};
use crate::golden::{GoldenMeasurement, GoldenSnp};
use crate::snp::certs::{amd_builtin_asks, parse_certificate};
use crate::snp::certs::{check_amd_crl, ChainError, VerifiedChain};
use crate::snp::policy::{leaf_matches_report, minimum_tcb_for_report, GuestPolicy, Tcb};
use crate::snp::{amd_extensions, verify_chain, SnpReport};
use crate::tpm::AkPublic;
use openssl::x509::X509;

pub(crate) fn verify(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
    _ak: Option<&AkPublic>,
    checks: &mut Checks,
) {
    let Some(snp) = &evidence.sev_snp else {
        checks.fail(
            "snp.report",
            "the platform is SEV-SNP but the evidence has no sev_snp section",
        );
        return;
    };
    let expectations = golden.snp.clone().unwrap_or_else(|| GoldenSnp {
        vmpls: vec![0],
        ..GoldenSnp::default()
    });
    let report_bytes = report_bytes(snp, checks);
    let report = match SnpReport::parse(&report_bytes) {
        Ok(report) => report,
        Err(e) => {
            checks.fail("snp.report", e.to_string());
            return;
        }
    };
    checks.pass(
        "snp.report",
        format!("SNP report version {} parsed", report.fields.version),
    );

    if !check_report(
        &report,
        snp.vek_cert.as_slice(),
        &snp.cert_chain,
        &expectations,
        options,
        checks,
    ) {
        return;
    }
    check_report_data(evidence, &report, checks);
}

/// The report to verify. On Azure the report lives inside the HCL report; a separate copy must
/// be the same bytes.
fn report_bytes(snp: &SnpEvidence, checks: &mut Checks) -> Vec<u8> {
    let mut report_bytes = snp.attestation_report.0.clone();
    if let Some(hcl) = &snp.hcl_report {
        match HclReport::parse(hcl.as_slice()) {
            Ok(parsed) => {
                let inner = parsed.hardware_report.to_vec();
                if !report_bytes.is_empty() && report_bytes != inner {
                    checks.fail(
                        "azure.hcl_report",
                        "attestation_report differs from the report inside hcl_report",
                    );
                } else {
                    checks.pass(
                        "azure.hcl_report",
                        "HCL report parsed; its SNP report is the one verified",
                    );
                }
                report_bytes = inner;
            }
            Err(e) => checks.fail("azure.hcl_report", e.to_string()),
        }
    }
    report_bytes
}

/// `snp.report_data`: on Azure it must hash the HCL's var_data (which holds the AK); elsewhere it
/// must bind this AK and the nonce.
fn check_report_data(evidence: &Evidence, report: &SnpReport, checks: &mut Checks) {
    let report_data = report.report_data();
    if evidence.platform().cloud == Cloud::Azure {
        match azure_var_data(evidence) {
            Some(var_data) => checks.compare(
                "snp.report_data",
                binding::azure_var_data_bound(report_data, &var_data),
                Claim::new(
                    "report_data[0..32] is SHA-256(var_data), so the report vouches for the AK inside it",
                    "report_data[0..32] is not SHA-256(var_data): the report does not vouch for the AK inside it",
                ),
                hex::encode(openssl::sha::sha256(&var_data)),
                hex::encode(&report_data[..32]),
            ),
            None => checks.fail("snp.report_data", "Azure evidence without var_data"),
        }
    } else {
        let expected =
            binding::report_data(evidence.tpm.ak_pub.as_slice(), &evidence.bound_nonce());
        checks.compare(
            "snp.report_data",
            expected == *report_data,
            Claim::new(
                "report_data is SHA-512(\"cvm-report-data/v1\\0\" || len(AK) || AK || nonce): this AK, this TEE, now",
                "report_data does not bind this AK and nonce (SHA-512(\"cvm-report-data/v1\\0\" || len(AK) || AK || nonce))",
            ),
            hex::encode(expected),
            hex::encode(report_data),
        );
    }
}

/// The checks that need only the report and its certificates. Returns false when the chain could
/// not be established (later checks would mean nothing).
pub(crate) fn check_report(
    report: &SnpReport,
    vek_cert: &[u8],
    cert_chain: &[Bytes],
    expectations: &GoldenSnp,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> bool {
    let Some((leaf, chain)) = check_chain(vek_cert, cert_chain, options, checks) else {
        return false;
    };
    check_signature(report, &leaf, &chain, checks);
    check_policy(report, expectations, checks);
    check_tcb(report, &chain.root, expectations, checks);
    check_crls(&chain, options, checks);
    check_measurement(report, expectations, checks);
    true
}

/// `snp.chain`: the VCEK/VLEK up through an ASK/ASVK (given or built in) to a pinned root.
fn check_chain(
    vek_cert: &[u8],
    cert_chain: &[Bytes],
    options: &VerifyOptions,
    checks: &mut Checks,
) -> Option<(X509, VerifiedChain)> {
    let leaf = match parse_certificate(vek_cert) {
        Ok(leaf) => leaf,
        Err(e) => {
            checks.fail("snp.chain", format!("VCEK/VLEK: {e}"));
            return None;
        }
    };
    let mut intermediates = Vec::new();
    for cert in cert_chain {
        match parse_certificate(cert.as_slice()) {
            Ok(cert) => intermediates.push(cert),
            Err(e) => checks.fail("snp.chain", format!("cert_chain entry: {e}")),
        }
    }
    intermediates.extend(amd_builtin_asks());
    match verify_chain(&leaf, &intermediates, &options.snp_roots, options.at_unix) {
        Ok(chain) => {
            let root = if chain.root_is_test_only {
                format!("TEST-ONLY root {} (named by the caller)", chain.root)
            } else {
                format!("AMD root {} (pinned)", chain.root)
            };
            checks.pass(
                "snp.chain",
                format!(
                    "{} <- {} <- {root}, valid at the verification time",
                    chain.leaf, chain.intermediate
                ),
            );
            Some((leaf, chain))
        }
        Err(e) => {
            checks.fail("snp.chain", e.to_string());
            None
        }
    }
}

/// `snp.signature` and `snp.vcek_matches_report`: the leaf signed the report, and its AMD
/// extensions (chip ID, TCB) are the report's.
fn check_signature(report: &SnpReport, leaf: &X509, chain: &VerifiedChain, checks: &mut Checks) {
    match report.signature_valid(&chain.leaf_key) {
        Ok(true) => checks.pass(
            "snp.signature",
            "the report's ECDSA P-384 signature over bytes 0..0x2a0 verifies",
        ),
        Ok(false) => checks.fail(
            "snp.signature",
            "the report's signature does not verify with the VCEK/VLEK",
        ),
        Err(e) => checks.fail("snp.signature", e.to_string()),
    }
    checks.result(
        "snp.vcek_matches_report",
        leaf.to_der()
            .map_err(|e| e.to_string())
            .and_then(|der| amd_extensions(&der).map_err(|e| e.to_string()))
            .and_then(|ext| leaf_matches_report(&ext, report)),
    );
}

/// `snp.policy.*` and `snp.vmpl`: guest policy bits and the requesting VMPL.
fn check_policy(report: &SnpReport, expectations: &GoldenSnp, checks: &mut Checks) {
    let policy = GuestPolicy::from_raw(report.fields.policy.0);
    checks.compare(
        "snp.policy.debug",
        !policy.debug || expectations.allow_debug,
        Claim::new(
            if expectations.allow_debug {
                "debug allowed by the golden measurement"
            } else {
                "debugging is disabled, as required"
            },
            "debugging is enabled (policy DEBUG), which the golden measurement does not allow",
        ),
        if expectations.allow_debug {
            "any"
        } else {
            "debug=0"
        },
        format!("debug={}", u8::from(policy.debug)),
    );
    checks.compare(
        "snp.policy.migration_agent",
        !policy.migrate_ma || expectations.allow_migration_agent,
        Claim::new(
            "a migration agent may only be associated when the golden measurement allows it",
            "a migration agent is associated, which the golden measurement does not allow",
        ),
        if expectations.allow_migration_agent {
            "any"
        } else {
            "migrate_ma=0"
        },
        format!("migrate_ma={}", u8::from(policy.migrate_ma)),
    );
    checks.compare(
        "snp.vmpl",
        expectations.vmpls.contains(&report.fields.vmpl),
        Claim::new(
            "the report was requested from an allowed VMPL",
            "the report was requested from a VMPL that is not allowed",
        ),
        format!("{:?}", expectations.vmpls),
        report.fields.vmpl.to_string(),
    );
}

/// `snp.measurement`: the launch measurement is one the golden allows (skipped when it names
/// none).
fn check_measurement(report: &SnpReport, expectations: &GoldenSnp, checks: &mut Checks) {
    let measurement = hex::encode(report.fields.measurement);
    if expectations.measurements.is_empty() {
        checks.skip(
            "snp.measurement",
            format!("no launch measurement in the golden measurement (reported {measurement})"),
        );
    } else {
        checks.compare(
            "snp.measurement",
            expectations
                .measurements
                .iter()
                .any(|m| m.0 == report.fields.measurement),
            Claim::new(
                "the launch measurement is one the golden measurement allows",
                "the launch measurement is none of those the golden measurement allows",
            ),
            expectations
                .measurements
                .iter()
                .map(|m| m.to_hex())
                .collect::<Vec<_>>()
                .join(" | "),
            measurement,
        );
    }
}

/// `snp.tcb`: the reported TCB against the golden's minimum, or AMD's published minimum for the
/// product that signed it (`snp::policy::default_minimum_tcb`) when the golden names none.
fn check_tcb(report: &SnpReport, root: &str, expectations: &GoldenSnp, checks: &mut Checks) {
    let reported = Tcb::from_sev(&report.fields.reported_tcb);
    let (minimum, source) = match &expectations.minimum_tcb {
        Some(minimum) => (*minimum, "the golden measurement's minimum"),
        None => match minimum_tcb_for_report(root, report) {
            Ok(Some(minimum)) => (minimum, "AMD's published minimum for this product"),
            Ok(None) => {
                return checks.skip(
                    "snp.tcb",
                    format!(
                    "no minimum TCB in the golden and none known for {root} (reported {reported})"
                ),
                )
            }
            Err(e) => return checks.fail("snp.tcb", e),
        },
    };
    let low = reported.below(&minimum);
    checks.compare(
        "snp.tcb",
        low.is_empty(),
        Claim::outcome(if low.is_empty() {
            format!("reported TCB is at or above {source}")
        } else {
            format!("below {source}: {}", low.join(", "))
        }),
        format!(">= {minimum}"),
        reported.to_string(),
    );
}

/// `snp.crl`: AMD's CRL for the product (KDS `/vcek/v1/{product}/crl`), when the verifier has
/// one, must be signed by the ARK, current, and not revoke the ASK/ASVK.
fn check_crls(chain: &VerifiedChain, options: &VerifyOptions, checks: &mut Checks) {
    if options.amd_crls.is_empty() {
        return checks.skip(
            "snp.crl",
            "no AMD CRL given: revocation of the ASK/ASVK is not checked (cvm-cli verify --amd-crl)",
        );
    }
    let mut last_error = None;
    for crl in &options.amd_crls {
        match check_amd_crl(
            crl,
            &chain.root_certificate,
            &chain.intermediate_certificate,
            options.at_unix,
        ) {
            Ok(()) => {
                return checks.pass(
                    "snp.crl",
                    format!(
                        "{}'s CRL is signed, current and does not revoke {}",
                        chain.root, chain.intermediate
                    ),
                )
            }
            Err(e @ ChainError::Revoked { .. }) => return checks.fail("snp.crl", e.to_string()),
            Err(e) => last_error = Some(e),
        }
    }
    checks.fail(
        "snp.crl",
        format!(
            "no AMD CRL given fits {}: {}",
            chain.root,
            last_error.map(|e| e.to_string()).unwrap_or_default()
        ),
    );
}

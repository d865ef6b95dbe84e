//! Intel TDX checks: the TD quote, Intel's PCK chain to a pinned root, the Quoting Enclave's
//! report and its binding of the attestation key, the quote signature, the collateral (TCB info,
//! QE identity, CRLs) and TCB status, debug, MRTD/RTMR/MRSEAM against the golden values, and how
//! `report_data` binds the AK (GCP: the agent's own encoding; Azure: SHA-256 of `var_data`).

use super::report::{Checks, Claim};
use super::tpm::azure_var_data;
use super::VerifyOptions;
use crate::azure::{HclReport, HclReportType};
use crate::binding;
use crate::evidence::{Cloud, Evidence};
use crate::golden::{GoldenMeasurement, GoldenTdx};
use crate::tdx::certs::{
    check_crl, parse_pck_certs, verify_intel_chain, CertError, ChainShape, IntelChain, PckCerts,
};
use crate::tdx::collateral::{self, BodySignatureError, ParsedCollateral, TcbInfo, Window};
use crate::tdx::crypto::{
    p256_ec_key, verify_p256_raw_ec, verify_p256_raw_remembered, CryptoError,
};
use crate::tdx::tcb::{
    module_level, platform_level, qe_level, relaunch_status, sgx_level, LaunchStatuses, TcbError,
    TcbMatch,
};
use crate::tdx::x509::IntelCert;
use crate::tdx::{SgxExtensions, TcbStatus, Td15Fields, TdQuote, TdReportBody, TdxCollateral};
use std::sync::Arc;

/// Returns the quoted RTMR3 when the quote's PCK chain and signatures verified (for
/// `workload.rtmr3`), else `None`.
pub(crate) fn verify(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> Option<[u8; 48]> {
    let Some(tdx) = &evidence.tdx else {
        checks.fail(
            "tdx.quote",
            "the platform is TDX but the evidence has no tdx section",
        );
        return None;
    };
    let expectations = golden.tdx.clone().unwrap_or_default();
    let quote = match TdQuote::parse(tdx.quote.as_slice()) {
        Ok(quote) => quote,
        Err(e) => {
            checks.fail("tdx.quote", e.to_string());
            return None;
        }
    };
    checks.pass("tdx.quote", format!("{} parsed", quote.describe()));
    if let Some(hcl) = &tdx.hcl_report {
        check_hcl_td_report(hcl.as_slice(), &quote.body, checks);
    }
    // The verifier's collateral always wins: collateral the evidence carries comes from the
    // machine being judged, which could pick an old TCB info that rates its TCB better.
    let (collateral, source) = match (&options.tdx_collateral, &tdx.collateral) {
        (Some(c), _) => (Some(c), "supplied by the verifier"),
        (None, Some(c)) => (
            Some(c),
            "carried in the evidence (the verifier supplied none; Intel's signatures still checked)",
        ),
        (None, None) => (None, ""),
    };
    if !check_quote(
        &quote,
        collateral.map(|c| (c, source)),
        &expectations,
        options,
        checks,
    ) {
        return None;
    }
    if let Some(ccel) = &evidence.event_logs.ccel {
        let workload = evidence.event_logs.workload.as_ref();
        let workload_rtmr3 = workload.map(|log| log.replay_sha384().0);
        check_ccel(ccel.as_slice(), &quote.body, workload_rtmr3, checks);
    }
    check_report_data(evidence, &quote.body.report_data, checks);
    Some(quote.body.rtmr[3])
}

/// `tdx.report_data`: how the quote binds the AK (Azure: SHA-256 of `var_data`; elsewhere the
/// agent's own encoding of the AK and the nonce).
fn check_report_data(evidence: &Evidence, report_data: &[u8; 64], checks: &mut Checks) {
    if evidence.platform().cloud == Cloud::Azure {
        match azure_var_data(evidence) {
            Some(var_data) => checks.compare(
                "tdx.report_data",
                binding::azure_var_data_bound(report_data, &var_data),
                Claim::new(
                    "report_data[0..32] is SHA-256(var_data), so the quote vouches for the AK inside it",
                    "report_data[0..32] is not SHA-256(var_data): the quote does not vouch for the AK inside it",
                ),
                hex::encode(openssl::sha::sha256(&var_data)),
                hex::encode(&report_data[..32]),
            ),
            None => checks.fail("tdx.report_data", "Azure evidence without var_data"),
        }
    } else {
        let expected =
            binding::report_data(evidence.tpm.ak_pub.as_slice(), &evidence.bound_nonce());
        checks.compare(
            "tdx.report_data",
            expected == *report_data,
            Claim::new(
                "report_data is SHA-512(\"cvm-report-data/v1\\0\" || len(AK) || AK || nonce): this AK, this TD, now",
                "report_data does not bind this AK and nonce (SHA-512(\"cvm-report-data/v1\\0\" || len(AK) || AK || nonce))",
            ),
            hex::encode(expected),
            hex::encode(report_data),
        );
    }
}

/// The CC event log must replay (SHA-384) to the quoted RTMRs. Its register index 0 is MRTD
/// (never extended at run time) and 1..=4 are RTMR0..3. RTMR3, which no firmware event
/// extends, may instead hold the workload log the agent extended into it (`workload_rtmr3`,
/// its SHA-384 replay), which `workload.rtmr3` judges.
fn check_ccel(
    bytes: &[u8],
    body: &TdReportBody,
    workload_rtmr3: Option<[u8; 48]>,
    checks: &mut Checks,
) {
    let log = match crate::eventlog::TcgLog::parse(bytes) {
        Ok(log) => log,
        Err(e) => return checks.fail("tdx.ccel", e.to_string()),
    };
    let replayed = log.replay(crate::tpm::HashAlg::Sha384);
    let mut mismatches = Vec::new();
    let mut rtmr3_by_workload = false;
    for rtmr in 0..4usize {
        let logged = replayed.get(&(rtmr as u32 + 1));
        let value = logged.cloned().unwrap_or_else(|| vec![0u8; 48]);
        if value == body.rtmr[rtmr] {
            continue;
        }
        if rtmr == 3 && logged.is_none() && workload_rtmr3 == Some(body.rtmr[3]) {
            rtmr3_by_workload = true;
            continue;
        }
        mismatches.push(format!(
            "RTMR{rtmr}: log {}, quote {}{}",
            hex::encode(&value),
            hex::encode(body.rtmr[rtmr]),
            if rtmr == 3 && logged.is_none() {
                " (nor is it the workload log's SHA-384 replay)"
            } else {
                ""
            }
        ));
    }
    if mismatches.is_empty() {
        checks.pass(
            "tdx.ccel",
            if rtmr3_by_workload {
                format!(
                    "{} CC event log events replay to the quoted RTMR0-2; RTMR3 holds the \
                     workload log (workload.rtmr3)",
                    log.events.len()
                )
            } else {
                format!(
                    "{} CC event log events replay to the quoted RTMR0-3",
                    log.events.len()
                )
            },
        );
    } else {
        checks.fail(
            "tdx.ccel",
            format!(
                "the CC event log does not explain the quote: {}",
                mismatches.join("; ")
            ),
        );
    }
}

/// Azure: the TD report inside the HCL report must be the one the quote was made from (Azure's
/// quote service turns that TD report into the quote), so `var_data`'s binding carries over.
pub(crate) fn check_hcl_td_report(hcl: &[u8], quoted: &TdReportBody, checks: &mut Checks) {
    let parsed = match HclReport::parse(hcl) {
        Ok(parsed) => parsed,
        Err(e) => {
            checks.fail("azure.hcl_report", e.to_string());
            return;
        }
    };
    if parsed.report_type != HclReportType::Tdx {
        checks.fail(
            "azure.hcl_report",
            "the HCL report carries an SNP report, not a TD report",
        );
        return;
    }
    match TdReportBody::from_td_report(parsed.hardware_report) {
        Ok(td_report) if td_report == *quoted => checks.pass(
            "azure.hcl_report",
            "HCL report parsed; its TD report is the one the quote covers",
        ),
        Ok(td_report) => checks.compare(
            "azure.hcl_report",
            false,
            Claim::outcome("the TD report inside the HCL report differs from the quoted TD report"),
            format!("report_data {}", hex::encode(quoted.report_data)),
            format!("report_data {}", hex::encode(td_report.report_data)),
        ),
        Err(e) => checks.fail("azure.hcl_report", format!("TD report: {e}")),
    }
}

fn at_text(at: i64) -> String {
    openssl::asn1::Asn1Time::from_unix(at)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string())
}

fn window_problem(what: &str, window: &Window, issue: &str, next: &str, at: i64) -> Option<String> {
    (!window.contains(at)).then(|| {
        format!(
            "{what} is not valid at {}: issueDate {issue}, nextUpdate {next}",
            at_text(at)
        )
    })
}

fn chain_text(chain: &IntelChain) -> String {
    chain.describe()
}

// The steps below feed each other, as in dcap-qvl's `verify.rs`: PCK chain -> QE report
// signature -> QE report data binding -> quote signature -> collateral -> TCB info / QE identity
// -> revocation -> TCB status -> measurements. Each records its check and hands the next step
// the fact it established (or `None`), so no step runs on data an earlier one did not verify.

/// Step 1: the quote's PCK chain, verified up to a trusted root at the verification time.
struct VerifiedPck {
    chain: IntelChain,
    /// The parsed chain, with the PCK leaf's SGX extensions (FMSPC, PCE ID, SVNs) or why they
    /// could not be read.
    parsed: Arc<PckCerts>,
}

/// Steps 2-4: the QE report is signed by the PCK key, binds the attestation key, and that key
/// signed the quote. Only this unlocks the collateral and measurement checks.
struct VerifiedQuote<'a> {
    quote: &'a TdQuote,
    pck: VerifiedPck,
}

/// The TCB info verified (signed, current, TDX v3) and for this platform's FMSPC / PCE ID.
struct VerifiedTcbInfo<'a> {
    info: &'a TcbInfo,
    extensions: &'a SgxExtensions,
}

/// Every check of a TD quote that needs only the quote, its collateral and the expectations.
/// Returns false when the quote's signatures could not be established (later checks would mean
/// nothing).
pub(crate) fn check_quote(
    quote: &TdQuote,
    collateral: Option<(&TdxCollateral, &str)>,
    expectations: &GoldenTdx,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> bool {
    let Some(pck) = verify_pck_chain(quote, options, checks) else {
        return false;
    };
    let Some(verified) = verify_quote_signatures(quote, pck, checks) else {
        return false;
    };
    check_collateral(&verified, collateral, expectations, options, checks);
    check_measurements(&verified, expectations, checks);
    true
}

/// Step 1: `tdx.pck_chain`.
fn verify_pck_chain(
    quote: &TdQuote,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> Option<VerifiedPck> {
    let parsed_chain = match parse_pck_certs(&quote.pck_chain_pem) {
        Ok(chain) => chain,
        Err(e) => {
            checks.fail("tdx.pck_chain", format!("PCK certificate chain: {e}"));
            return None;
        }
    };
    match verify_intel_chain(
        "PCK certificate",
        &parsed_chain.certs,
        ChainShape::ThroughIntermediate,
        &options.tdx_roots,
        options.at_unix,
    ) {
        Ok(chain) => {
            checks.pass(
                "tdx.pck_chain",
                format!("{}, valid at the verification time", chain_text(&chain)),
            );
            Some(VerifiedPck {
                chain,
                parsed: parsed_chain,
            })
        }
        Err(e) => {
            checks.fail("tdx.pck_chain", e.to_string());
            None
        }
    }
}

/// Steps 2-4. Each of the three checks is recorded even when an earlier one failed (the report
/// says everything that is wrong), but only all three together verify the quote.
fn verify_quote_signatures<'a>(
    quote: &'a TdQuote,
    pck: VerifiedPck,
    checks: &mut Checks,
) -> Option<VerifiedQuote<'a>> {
    let qe_report_signed = verify_qe_report_signature(quote, &pck, checks);
    let key_bound = check_qe_report_data(quote, checks);
    let quote_signed = verify_quote_signature(quote, checks);
    (qe_report_signed && key_bound && quote_signed).then_some(VerifiedQuote { quote, pck })
}

/// Step 2: `tdx.qe_report_signature`, by the verified PCK key. Remembered per process by the
/// PCK certificate's digest, the QE report and the signature: they repeat in every quote of a
/// platform.
fn verify_qe_report_signature(quote: &TdQuote, pck: &VerifiedPck, checks: &mut Checks) -> bool {
    let leaf = &pck.chain.leaf;
    let verified = leaf.key().ok_or(CryptoError::NotP256Key).and_then(|key| {
        verify_p256_raw_remembered(
            &leaf.id,
            key,
            quote.qe_report_bytes(),
            &quote.qe_report_signature,
        )
    });
    match verified {
        Ok(true) => {
            checks.pass(
                "tdx.qe_report_signature",
                "the QE report's ECDSA P-256 signature verifies with the PCK key",
            );
            true
        }
        Ok(false) => {
            checks.fail(
                "tdx.qe_report_signature",
                "the QE report's signature does not verify with the PCK key",
            );
            false
        }
        Err(e) => {
            checks.fail("tdx.qe_report_signature", e.to_string());
            false
        }
    }
}

/// Step 3: `tdx.qe_report_data`, the QE report binding the attestation key.
fn check_qe_report_data(quote: &TdQuote, checks: &mut Checks) -> bool {
    let expected = quote.expected_qe_report_data();
    let bound = expected == quote.qe_report.report_data;
    checks.compare(
        "tdx.qe_report_data",
        bound,
        Claim::new(
            "QE report_data is SHA-256(attestation key || QE auth data) || 32 zero bytes: the QE vouches for this attestation key",
            "QE report_data is not SHA-256(attestation key || QE auth data) || 32 zero bytes: the QE does not vouch for this attestation key",
        ),
        hex::encode(expected),
        hex::encode(quote.qe_report.report_data),
    );
    bound
}

/// Step 4: `tdx.quote_signature`, by the attestation key.
fn verify_quote_signature(quote: &TdQuote, checks: &mut Checks) -> bool {
    match p256_ec_key(&quote.attestation_key)
        .and_then(|key| verify_p256_raw_ec(&key, quote.signed_bytes(), &quote.signature))
    {
        Ok(true) => {
            checks.pass(
                "tdx.quote_signature",
                if quote.body_descriptor.is_some() {
                    "the quote's ECDSA P-256 signature over header || body descriptor || TD report body verifies with the attestation key"
                } else {
                    "the quote's ECDSA P-256 signature over header || TD report body verifies with the attestation key"
                },
            );
            true
        }
        Ok(false) => {
            checks.fail(
                "tdx.quote_signature",
                "the quote's signature does not verify with the attestation key",
            );
            false
        }
        Err(e) => {
            checks.fail("tdx.quote_signature", e.to_string());
            false
        }
    }
}

/// Last step: debug, MRSEAM, MRTD, the RTMRs and MRSERVICETD of the verified quote against the
/// golden values.
fn check_measurements(verified: &VerifiedQuote, expectations: &GoldenTdx, checks: &mut Checks) {
    let body = &verified.quote.body;
    checks.compare(
        "tdx.debug",
        !body.debug() || expectations.allow_debug,
        Claim::new(
            if expectations.allow_debug {
                "debug allowed by the golden measurement"
            } else {
                "the TD is not debuggable (TD attributes bit 0), as required"
            },
            "the TD is debuggable (TD attributes bit 0), which the golden measurement does not allow",
        ),
        if expectations.allow_debug {
            "any"
        } else {
            "debug=0"
        },
        format!(
            "debug={} (td_attributes {})",
            u8::from(body.debug()),
            hex::encode(body.td_attributes)
        ),
    );
    allow_list(
        "tdx.mrseam",
        "the TDX module (MRSEAM) is one the golden measurement allows",
        &expectations.mrseams,
        &body.mrseam,
        checks,
    );
    allow_list(
        "tdx.mrtd",
        "the TD's build-time measurement (MRTD) is one the golden measurement allows",
        &expectations.mrtds,
        &body.mrtd,
        checks,
    );
    for (index, expected) in expectations.rtmrs().iter().enumerate() {
        let name = format!("tdx.rtmr[{index}]");
        let actual = hex::encode(body.rtmr[index]);
        match expected {
            Some(expected) => checks.compare(
                name,
                expected.0 == body.rtmr[index],
                Claim::new(
                    format!("RTMR{index} equals the golden value"),
                    format!("RTMR{index} differs from the golden value"),
                ),
                expected.to_hex(),
                actual,
            ),
            None => checks.skip(
                name,
                format!("no RTMR{index} in the golden measurement (reported {actual})"),
            ),
        }
    }
    check_mrservicetd(verified.quote, &expectations.mrservicetds, checks);
}

/// `tdx.mrservicetd`: MRSERVICETD (TD report 1.5 bodies only) against the golden allow-list. A
/// golden that pins it refuses a quote whose body cannot state it (a TD report 1.0 body).
fn check_mrservicetd(quote: &TdQuote, allowed: &[crate::Sha384Digest], checks: &mut Checks) {
    match &quote.td15 {
        Some(td15) => allow_list(
            "tdx.mrservicetd",
            "the service TDs bound to the TD (MRSERVICETD) are ones the golden measurement allows",
            allowed,
            &td15.mrservicetd,
            checks,
        ),
        None if allowed.is_empty() => checks.skip(
            "tdx.mrservicetd",
            "not in the golden measurement (the quote's TD report 1.0 body has no MRSERVICETD)",
        ),
        None => checks.compare(
            "tdx.mrservicetd",
            false,
            Claim::outcome("the golden measurement pins MRSERVICETD, but the quote's TD report 1.0 body does not state it"),
            allowed
                .iter()
                .map(|a| a.to_hex())
                .collect::<Vec<_>>()
                .join(" | "),
            format!("{} (no MRSERVICETD)", quote.describe()),
        ),
    }
}

fn allow_list(
    name: &str,
    reason: &str,
    allowed: &[crate::Sha384Digest],
    actual: &[u8; 48],
    checks: &mut Checks,
) {
    if allowed.is_empty() {
        checks.skip(
            name,
            format!(
                "not in the golden measurement (reported {})",
                hex::encode(actual)
            ),
        );
    } else {
        checks.compare(
            name,
            allowed.iter().any(|a| a.0 == *actual),
            reason,
            allowed
                .iter()
                .map(|a| a.to_hex())
                .collect::<Vec<_>>()
                .join(" | "),
            hex::encode(actual),
        );
    }
}

/// Step 5: the collateral, then TCB info, QE identity, revocation and TCB status.
fn check_collateral(
    verified: &VerifiedQuote,
    collateral: Option<(&TdxCollateral, &str)>,
    expectations: &GoldenTdx,
    options: &VerifyOptions,
    checks: &mut Checks,
) {
    let Some((collateral, parsed)) = parse_collateral(collateral, checks) else {
        return;
    };
    let p: &ParsedCollateral = &parsed;
    let at = options.at_unix;
    let tcb_chain = verify_intel_chain(
        "TCB Signing certificate",
        &p.tcb_info_chain,
        ChainShape::DirectlyUnderRoot,
        &options.tdx_roots,
        at,
    );
    let extensions = &verified.pck.parsed.extensions;
    let tcb_info = check_tcb_info(p, &tcb_chain, extensions, at, checks);
    // Intel signs both with the same certificate: do not check the same chain twice.
    let qe_chain_own = (collateral.qe_identity_issuer_chain != collateral.tcb_info_issuer_chain)
        .then(|| {
            verify_intel_chain(
                "TCB Signing certificate",
                &p.qe_identity_chain,
                ChainShape::DirectlyUnderRoot,
                &options.tdx_roots,
                at,
            )
        });
    let qe_chain = qe_chain_own.as_ref().unwrap_or(&tcb_chain);
    let qe = check_qe_identity(p, qe_chain, verified.quote, at, checks);
    // Every certificate the root signed for this verification: the TCB Signing certificate,
    // and the QE identity's signer when its chain is another one.
    let signers: Vec<&IntelChain> = [Some(&tcb_chain), qe_chain_own.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|chain| chain.as_ref().ok())
        .collect();
    check_revocation(p, &verified.pck.chain, &signers, at, checks);
    if let Some(tcb_info) = tcb_info {
        check_tcb_status(&tcb_info, verified.quote, &qe, expectations, checks);
    }
}

/// Step 5a: `tdx.collateral`, the collateral to judge (the verifier's or the evidence's), parsed.
fn parse_collateral<'c>(
    collateral: Option<(&'c TdxCollateral, &str)>,
    checks: &mut Checks,
) -> Option<(&'c TdxCollateral, std::sync::Arc<ParsedCollateral>)> {
    let Some((collateral, source)) = collateral else {
        checks.fail(
            "tdx.collateral",
            "no collateral: the evidence carries none and the verifier supplied none (TCB status cannot be judged)",
        );
        return None;
    };
    match collateral::parse(collateral) {
        Ok(parsed) => {
            checks.pass(
                "tdx.collateral",
                format!("TCB info and QE identity parsed ({source})"),
            );
            Some((collateral, parsed))
        }
        Err(e) => {
            checks.fail("tdx.collateral", e.to_string());
            None
        }
    }
}

/// Step 5b: `tdx.tcb_info`, signed by a TCB Signing certificate under a trusted root, current,
/// for this platform. Returns it only when all of that holds (the TCB status needs it).
fn check_tcb_info<'a>(
    p: &'a ParsedCollateral,
    tcb_chain: &Result<IntelChain, CertError>,
    extensions: &'a Result<SgxExtensions, CertError>,
    at: i64,
    checks: &mut Checks,
) -> Option<VerifiedTcbInfo<'a>> {
    let mut problems = Vec::new();
    if let Err(e) = tcb_chain {
        problems.push(e.to_string());
    }
    signature_problem("TCB info", &p.tcb_info_signature, &mut problems);
    let info = &p.tcb_info;
    if info.id != "TDX" || info.version != 3 {
        problems.push(format!(
            "TCB info is {} version {}, expected TDX version 3",
            info.id, info.version
        ));
    }
    problems.extend(window_problem(
        "TCB info",
        &p.tcb_info_window,
        &info.issue_date,
        &info.next_update,
        at,
    ));
    let (actual_platform, platform_ok) = tcb_info_platform(info, extensions, &mut problems);
    let tcb_info_ok = problems.is_empty();
    let reason = match (tcb_info_ok, tcb_chain) {
        (true, Ok(chain)) => format!(
            "TCB info signed by {}, current at the verification time (issueDate {}, nextUpdate {}), for the PCK's FMSPC and PCE ID",
            chain_text(chain),
            info.issue_date,
            info.next_update
        ),
        (true, Err(_)) => String::new(),
        (false, _) => problems.join("; "),
    };
    checks.compare(
        "tdx.tcb_info",
        tcb_info_ok && platform_ok,
        Claim::outcome(reason),
        format!("fmspc {} pceId {}", info.fmspc, info.pce_id),
        actual_platform,
    );
    match extensions {
        Ok(extensions) if tcb_info_ok && platform_ok => Some(VerifiedTcbInfo { info, extensions }),
        _ => None,
    }
}

/// Whether the TCB info is for the PCK's platform (FMSPC and PCE ID), and the PCK's values.
fn tcb_info_platform(
    info: &TcbInfo,
    extensions: &Result<SgxExtensions, CertError>,
    problems: &mut Vec<String>,
) -> (String, bool) {
    match extensions {
        Ok(ext) => {
            let ok = info.fmspc.eq_ignore_ascii_case(&hex::encode(ext.fmspc))
                && info.pce_id.eq_ignore_ascii_case(&hex::encode(ext.pce_id));
            if !ok {
                problems.push("the TCB info is for another platform (FMSPC / PCE ID)".into());
            }
            (
                format!(
                    "fmspc {} pceId {}",
                    hex::encode_upper(ext.fmspc),
                    hex::encode_upper(ext.pce_id)
                ),
                ok,
            )
        }
        Err(e) => {
            problems.push(format!("PCK certificate: {e}"));
            ("(unreadable PCK extensions)".into(), false)
        }
    }
}

/// Step 5c: `tdx.qe_identity`, signed, current, and matching the quote's QE. Returns the QE's TCB
/// level (or why it has none) for the TCB status.
fn check_qe_identity(
    p: &ParsedCollateral,
    qe_chain: &Result<IntelChain, CertError>,
    quote: &TdQuote,
    at: i64,
    checks: &mut Checks,
) -> Result<TcbMatch, TcbError> {
    let mut problems = Vec::new();
    if let Err(e) = qe_chain {
        problems.push(e.to_string());
    }
    signature_problem("QE identity", &p.qe_identity_signature, &mut problems);
    let identity = &p.qe_identity;
    if identity.id != "TD_QE" || identity.version != 2 {
        problems.push(format!(
            "QE identity is {} version {}, expected TD_QE version 2",
            identity.id, identity.version
        ));
    }
    problems.extend(window_problem(
        "QE identity",
        &p.qe_identity_window,
        &identity.issue_date,
        &identity.next_update,
        at,
    ));
    let qe = qe_level(identity, &quote.qe_report);
    if let Err(e) = &qe {
        problems.push(e.to_string());
    }
    let qe_identity_ok = problems.is_empty();
    checks.compare(
        "tdx.qe_identity",
        qe_identity_ok,
        Claim::outcome(if qe_identity_ok {
            format!(
                "QE identity signed by the TCB Signing key, current (issueDate {}, nextUpdate {}); the QE's MRSIGNER, ISVPRODID, MISCSELECT and attributes match",
                identity.issue_date, identity.next_update
            )
        } else {
            problems.join("; ")
        }),
        format!(
            "mrsigner {} isvprodid {}",
            identity.mrsigner.to_lowercase(),
            identity.isvprodid
        ),
        format!(
            "mrsigner {} isvprodid {} isvsvn {}",
            hex::encode(quote.qe_report.mrsigner),
            quote.qe_report.isvprodid,
            quote.qe_report.isvsvn
        ),
    );
    qe
}

/// The platform, TDX module and QE levels found, their statuses and advisories, or why a level
/// could not be found.
#[derive(Default)]
struct TcbLevels {
    parts: Vec<String>,
    statuses: Vec<TcbStatus>,
    advisories: Vec<String>,
    errors: Vec<String>,
}

impl TcbLevels {
    /// Records a level; its status counts unless the TD relaunch rule replaced it.
    fn add(&mut self, part: String, level: &TcbMatch, counts: bool) {
        self.parts.push(part);
        if counts {
            self.statuses.push(level.status.clone());
        }
        self.advisories.extend(level.advisory_ids.clone());
    }
}

/// A TD report 1.5 body: Intel's TD relaunch rule with TEE_TCB_SVN2, given the launch-time
/// levels (`tdx::tcb::relaunch_status`). Ok(None) when a level is missing (that fails anyway).
fn relaunch_verdict(
    tcb_info: &VerifiedTcbInfo,
    platform: &Result<TcbMatch, TcbError>,
    module: &Result<Option<TcbMatch>, TcbError>,
    qe: &Result<TcbMatch, TcbError>,
    td15: &Td15Fields,
) -> Result<Option<TcbStatus>, TcbError> {
    let (Ok(platform), Ok(module)) = (platform, module) else {
        return Ok(None);
    };
    let Some(sgx) = sgx_level(tcb_info.info, tcb_info.extensions) else {
        return Ok(None);
    };
    let launch = LaunchStatuses {
        sgx: &sgx.status,
        platform: &platform.status,
        module: module.as_ref().map(|m| &m.status),
        qe: qe.as_ref().ok().map(|m| &m.status),
    };
    relaunch_status(tcb_info.info, launch, &td15.tee_tcb_svn2)
}

/// Step 6: the TCB levels of the platform, the TDX module and the QE, from the verified TCB info
/// and TEE_TCB_SVN; for a TD report 1.5 body the relaunch rule may replace the platform's and
/// the module's statuses with Intel's `TDRelaunchAdvised` verdict.
fn tcb_levels(
    tcb_info: &VerifiedTcbInfo,
    quote: &TdQuote,
    qe: &Result<TcbMatch, TcbError>,
) -> TcbLevels {
    let mut levels = TcbLevels::default();
    let platform = platform_level(tcb_info.info, tcb_info.extensions, &quote.body);
    let module = module_level(tcb_info.info, &quote.body);
    let relaunch =
        (quote.td15.as_ref()).map(|td15| relaunch_verdict(tcb_info, &platform, &module, qe, td15));
    let counts = !matches!(relaunch, Some(Ok(Some(_))));
    match &platform {
        Ok(m) => levels.add(format!("platform {} ({})", m.status, m.tcb_date), m, counts),
        Err(e) => levels.errors.push(e.to_string()),
    }
    match &module {
        Ok(Some(m)) => levels.add(format!("TDX module {}", m.status), m, counts),
        Ok(None) => levels
            .parts
            .push("TDX module (version 0: no separate level)".into()),
        Err(e) => levels.errors.push(e.to_string()),
    }
    let svn2 = quote.td15.as_ref().map(|t| hex::encode(t.tee_tcb_svn2));
    match (relaunch, svn2) {
        (Some(Ok(Some(status))), Some(svn2)) => {
            levels.parts.push(format!(
                "{status}: launched under an out-of-date TDX module, TEE_TCB_SVN2 {svn2} (the module running now) is at the newest level"
            ));
            levels.statuses.push(status);
        }
        (Some(Ok(None)), Some(svn2)) => levels
            .parts
            .push(format!("TEE_TCB_SVN2 {svn2}: no relaunch advised")),
        (Some(Err(e)), _) => levels.errors.push(format!("TEE_TCB_SVN2: {e}")),
        _ => {}
    }
    match qe {
        Ok(m) => levels.add(format!("QE {}", m.status), m, true),
        Err(e) => levels.errors.push(format!("QE: {e}")),
    }
    levels.advisories.sort();
    levels.advisories.dedup();
    levels
}

/// Step 7: `tdx.tcb_status`, every level's status in the golden measurement's allow-list.
fn check_tcb_status(
    tcb_info: &VerifiedTcbInfo,
    quote: &TdQuote,
    qe: &Result<TcbMatch, TcbError>,
    expectations: &GoldenTdx,
    checks: &mut Checks,
) {
    let levels = tcb_levels(tcb_info, quote, qe);
    let allowed = &expectations.tcb_statuses;
    let not_allowed: Vec<&TcbStatus> = levels
        .statuses
        .iter()
        .filter(|s| !allowed.contains(s))
        .collect();
    let advisories = if levels.advisories.is_empty() {
        String::new()
    } else {
        format!("; advisories: {}", levels.advisories.join(", "))
    };
    let reason = if !levels.errors.is_empty() {
        levels.errors.join("; ")
    } else if not_allowed.is_empty() {
        format!("every TCB level's status is allowed{advisories}")
    } else {
        format!(
            "status {} is not allowed{advisories}",
            not_allowed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    checks.compare(
        "tdx.tcb_status",
        levels.errors.is_empty() && not_allowed.is_empty(),
        Claim::outcome(reason),
        format!(
            "one of {}",
            allowed
                .iter()
                .map(TcbStatus::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        levels.parts.join(", "),
    );
}

fn signature_problem(
    what: &str,
    result: &Result<bool, BodySignatureError>,
    problems: &mut Vec<String>,
) {
    match result {
        Ok(true) => {}
        Ok(false) => problems.push(format!(
            "the {what} signature does not verify with the TCB Signing key"
        )),
        Err(e) => problems.push(format!("{what} signature: {e}")),
    }
}

fn check_revocation(
    p: &ParsedCollateral,
    pck: &IntelChain,
    signers: &[&IntelChain],
    at: i64,
    checks: &mut Checks,
) {
    // Both CRLs are required: without them a revoked PCK (a leaked platform key) would pass.
    let mut problems = Vec::new();
    if p.pck_crl.is_none() {
        problems.push("the collateral has no PCK CRL: a revoked PCK would pass".to_owned());
    }
    if p.root_ca_crl.is_none() {
        problems.push("the collateral has no root CA CRL: a revoked PCK CA would pass".to_owned());
    }
    let mut done = Vec::new();
    match (&p.pck_crl, &pck.intermediate) {
        (Some(Ok(crl)), Some(issuer)) => {
            match check_crl("PCK CRL", crl, issuer, &[pck.leaf.as_ref()], at) {
                Ok(()) => done.push("PCK CRL"),
                Err(e) => problems.push(e.to_string()),
            }
        }
        (Some(Ok(_)), None) => problems.push("the PCK certificate has no intermediate CA".into()),
        (Some(Err(e)), _) => problems.push(format!("PCK CRL: {e}")),
        (None, _) => {}
    }
    match &p.root_ca_crl {
        Some(Ok(crl)) => {
            let mut covered: Vec<&IntelCert> = pck.intermediate.iter().map(Arc::as_ref).collect();
            covered.extend(signers.iter().map(|chain| chain.leaf.as_ref()));
            match check_crl("root CA CRL", crl, &pck.root_certificate, &covered, at) {
                Ok(()) => done.push("root CA CRL"),
                Err(e) => problems.push(e.to_string()),
            }
        }
        Some(Err(e)) => problems.push(format!("root CA CRL: {e}")),
        None => {}
    }
    if problems.is_empty() {
        checks.pass(
            "tdx.crl",
            format!(
                "{} signed, current and not revoking the PCK, its CA or the TCB Signing certificate",
                done.join(" and ")
            ),
        );
    } else {
        checks.fail("tdx.crl", problems.join("; "));
    }
}

#[cfg(test)]
mod ccel_tests {
    use super::*;
    use crate::verify::{Check, Status};

    /// A CCEL with SHA-384 events into register indexes 1 (RTMR0) and 3 (RTMR2).
    fn ccel() -> Vec<u8> {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        spec.extend_from_slice(&1u32.to_le_bytes());
        spec.extend_from_slice(&0x000cu16.to_le_bytes());
        spec.extend_from_slice(&48u16.to_le_bytes());
        spec.push(0);
        let mut log = Vec::new();
        log.extend_from_slice(&[0; 4]);
        log.extend_from_slice(&3u32.to_le_bytes());
        log.extend_from_slice(&[0; 20]);
        log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        log.extend_from_slice(&spec);
        for (index, digest) in [(1u32, [1u8; 48]), (3, [3; 48]), (1, [4; 48])] {
            log.extend_from_slice(&index.to_le_bytes());
            log.extend_from_slice(&0x8000_0001u32.to_le_bytes());
            log.extend_from_slice(&1u32.to_le_bytes());
            log.extend_from_slice(&0x000cu16.to_le_bytes());
            log.extend_from_slice(&digest);
            log.extend_from_slice(&0u32.to_le_bytes());
        }
        log
    }

    fn checked(body: &TdReportBody, log: &[u8]) -> Check {
        checked_with(body, log, None)
    }

    fn checked_with(body: &TdReportBody, log: &[u8], workload: Option<[u8; 48]>) -> Check {
        let mut checks = Checks::default();
        check_ccel(log, body, workload, &mut checks);
        checks.finish(String::new()).checks.remove(0)
    }

    #[test]
    fn ccel_must_replay_to_the_quoted_rtmrs() {
        let log = ccel();
        let replayed = crate::eventlog::TcgLog::parse(&log)
            .unwrap()
            .replay(crate::tpm::HashAlg::Sha384);
        let mut body = TdReportBody::parse(&[0u8; 584]).unwrap();
        body.rtmr[0].copy_from_slice(&replayed[&1]);
        body.rtmr[2].copy_from_slice(&replayed[&3]);
        assert_eq!(checked(&body, &log).status, Status::Pass);

        body.rtmr[3][0] ^= 1; // RTMR3 was never extended: it must stay zero
        let check = checked(&body, &log);
        assert_eq!(check.status, Status::Fail);
        assert!(check.reason.contains("RTMR3"), "{}", check.reason);
        assert_eq!(checked(&body, b"garbage").status, Status::Fail);

        // Unless RTMR3 is what the workload log replays to: the agent extended it.
        let check = checked_with(&body, &log, Some(body.rtmr[3]));
        assert_eq!(check.status, Status::Pass, "{}", check.reason);
        assert!(check.reason.contains("workload"), "{}", check.reason);
        let check = checked_with(&body, &log, Some([9; 48]));
        assert_eq!(check.status, Status::Fail, "{}", check.reason);
    }
}

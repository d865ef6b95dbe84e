//! TPM checks: which AK, its signature over the quote, the quote's nonce binding and PCR digest,
//! and the golden PCR values.

use super::report::{Checks, Claim};
use super::Facts;
use crate::azure::HclReport;
use crate::evidence::Evidence;
use crate::golden::GoldenMeasurement;
use crate::tpm::{pcr_digest, AkPublic, HashAlg, Quote, QuoteSignature};
use crate::workload::WORKLOAD_PCR;
use std::collections::BTreeMap;

/// Azure's `var_data`: from the HCL report when present, else as carried beside the quote.
pub(crate) fn azure_var_data(evidence: &Evidence) -> Option<Vec<u8>> {
    let from_hcl = evidence
        .sev_snp
        .as_ref()
        .and_then(|snp| snp.hcl_report.as_ref())
        .and_then(|hcl| HclReport::parse(hcl.as_slice()).ok())
        .map(|hcl| hcl.var_data.to_vec());
    let from_tdx_hcl = || {
        evidence
            .tdx
            .as_ref()
            .and_then(|tdx| tdx.hcl_report.as_ref())
            .and_then(|hcl| HclReport::parse(hcl.as_slice()).ok())
            .map(|hcl| hcl.var_data.to_vec())
    };
    from_hcl
        .or_else(from_tdx_hcl)
        .or_else(|| evidence.tpm.var_data.as_ref().map(|v| v.0.clone()))
}

/// Checks the quote with the AK. Its PCR values become verified facts only when the AK is
/// trusted (`ak::decide`), its signature verifies and the values hash to the signed digest.
pub(crate) fn verify_quote(
    evidence: &Evidence,
    ak: &AkPublic,
    ak_trusted: bool,
    checks: &mut Checks,
    facts: &mut Facts,
) {
    let signature = match (&evidence.tpm.signature, &evidence.tpm.raw_sig) {
        (Some(tpmt), _) => QuoteSignature::from_tpmt(tpmt.as_slice()),
        (None, Some(raw)) => QuoteSignature::from_raw(raw.as_slice(), &ak.key),
        (None, None) => {
            return checks.fail(
                "tpm.quote.signature",
                "the evidence carries no quote signature",
            );
        }
    };
    let signature_ok = check_signature(&signature, ak, evidence.tpm.quote.as_slice(), checks);
    let quote = match Quote::parse(evidence.tpm.quote.as_slice()) {
        Ok(quote) => quote,
        Err(e) => return checks.fail("tpm.quote.format", e.to_string()),
    };
    check_quote_nonce(evidence, &quote, checks);

    let bank: BTreeMap<u8, Vec<u8>> = evidence
        .tpm
        .pcrs
        .pcrs
        .iter()
        .map(|(i, v)| (*i, v.0.clone()))
        .collect();
    let banks = BTreeMap::from([(evidence.tpm.pcrs.hash, bank.clone())]);
    let hash = signature
        .as_ref()
        .map(|s| s.hash())
        .unwrap_or(HashAlg::Sha256);
    let digest_ok = check_pcr_digest(&quote, &banks, hash, checks);
    facts.quoted_selection = quote
        .selections
        .iter()
        .filter(|s| s.hash == HashAlg::Sha256)
        .flat_map(|s| s.pcrs.iter().copied())
        .collect();
    if ak_trusted && signature_ok && digest_ok && evidence.tpm.pcrs.hash == HashAlg::Sha256 {
        facts.quoted_pcrs = Some(bank);
    }
}

/// `tpm.quote.nonce`: the quote's qualifying data binds this nonce (and TEE report, for v2).
fn check_quote_nonce(evidence: &Evidence, quote: &Quote, checks: &mut Checks) {
    let expected = evidence.quote_qualifying_data();
    let reason = if evidence.tee_report_bound_by_quote().is_some() {
        "the quote's qualifying data binds the nonce and this TEE report (cvm-tpm-quote/v2)"
    } else {
        "the quote's qualifying data is SHA-256(\"cvm-tpm-quote/v1\\0\" || nonce)"
    };
    checks.compare(
        "tpm.quote.nonce",
        quote.extra_data == expected,
        Claim::new(
            reason,
            "the quote's qualifying data does not bind this nonce: a replayed or foreign quote",
        ),
        hex::encode(expected),
        hex::encode(&quote.extra_data),
    );
}

/// `tpm.quote.pcr_digest`: the reported PCR values hash to the signed digest.
fn check_pcr_digest(
    quote: &Quote,
    banks: &BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>>,
    hash: HashAlg,
    checks: &mut Checks,
) -> bool {
    match pcr_digest(quote, banks, hash) {
        Ok(digest) => {
            let ok = digest == quote.pcr_digest;
            checks.compare(
                "tpm.quote.pcr_digest",
                ok,
                Claim::new(
                    "the reported PCR values hash to the digest the TPM signed",
                    "the reported PCR values do not hash to the digest the TPM signed",
                ),
                hex::encode(&quote.pcr_digest),
                hex::encode(&digest),
            );
            ok
        }
        Err(e) => {
            checks.fail("tpm.quote.pcr_digest", e.to_string());
            false
        }
    }
}

fn check_signature(
    signature: &Result<QuoteSignature, crate::tpm::SignatureError>,
    ak: &AkPublic,
    quote: &[u8],
    checks: &mut Checks,
) -> bool {
    let result = signature
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|sig| sig.verify(&ak.key, quote).map_err(|e| e.to_string()));
    match result {
        Ok(true) => {
            checks.pass(
                "tpm.quote.signature",
                "the AK's signature over the quote verifies",
            );
            true
        }
        Ok(false) => {
            checks.fail(
                "tpm.quote.signature",
                "the quote's signature does not verify with the AK",
            );
            false
        }
        Err(e) => {
            checks.fail(
                "tpm.quote.signature",
                format!("cannot check the signature: {e}"),
            );
            false
        }
    }
}

/// Compares every golden PCR with the quoted value.
pub(crate) fn check_golden_pcrs(golden: &GoldenMeasurement, facts: &Facts, checks: &mut Checks) {
    let mut needed: Vec<u8> = golden.pcrs.keys().copied().collect();
    if golden.workload.is_some() && !needed.contains(&WORKLOAD_PCR) {
        needed.push(WORKLOAD_PCR);
    }
    let missing: Vec<String> = needed
        .iter()
        .filter(|i| !facts.quoted_selection.contains(i))
        .map(u8::to_string)
        .collect();
    if missing.is_empty() {
        checks.pass(
            "tpm.quote.selection",
            format!(
                "the quote covers every PCR the golden measurement checks ({} PCRs)",
                needed.len()
            ),
        );
    } else {
        checks.fail(
            "tpm.quote.selection",
            format!(
                "the quote does not cover PCR {}: their values are unauthenticated",
                missing.join(", ")
            ),
        );
    }
    if golden.pcrs.is_empty() {
        checks.skip("pcrs", "the golden measurement lists no PCR values");
    }
    for (index, expected) in &golden.pcrs {
        let name = format!("pcr[{index}]");
        let source = serde_json::to_value(expected.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match facts.quoted_pcrs.as_ref().and_then(|pcrs| pcrs.get(index)) {
            Some(actual) => checks.compare(
                name,
                actual.as_slice() == expected.sha256.0,
                Claim::new(
                    format!("PCR {index} equals the golden value ({source})"),
                    format!("PCR {index} differs from the golden value ({source})"),
                ),
                expected.sha256.to_hex(),
                hex::encode(actual),
            ),
            None => checks.fail(
                name,
                format!("PCR {index} has no value covered by a verified quote"),
            ),
        }
    }
}

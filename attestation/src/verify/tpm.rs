//! TPM checks: which AK, its signature over the quote, the quote's nonce binding and PCR digest,
//! and the golden PCR values.

use super::report::Checks;
use super::{Facts, VerifyOptions};
use crate::azure::{ak_from_var_data, HclReport};
use crate::evidence::{Cloud, Evidence};
use crate::golden::GoldenMeasurement;
use crate::tpm::{pcr_digest, qualifying_data, AkPublic, HashAlg, Quote, QuoteSignature};
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

/// Establishes the AK and checks the quote. Returns the AK when it could be determined.
pub(crate) fn verify_quote(
    evidence: &Evidence,
    options: &VerifyOptions,
    checks: &mut Checks,
    facts: &mut Facts,
) -> Option<AkPublic> {
    let ak = attestation_key(evidence, options, checks)?;

    let signature = match (&evidence.tpm.signature, &evidence.tpm.raw_sig) {
        (Some(tpmt), _) => QuoteSignature::from_tpmt(tpmt.as_slice()),
        (None, Some(raw)) => QuoteSignature::from_raw(raw.as_slice(), &ak.key),
        (None, None) => {
            checks.fail(
                "tpm.quote.signature",
                "the evidence carries no quote signature",
            );
            return Some(ak);
        }
    };
    let signature_ok = match signature
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|sig| {
            sig.verify(&ak.key, evidence.tpm.quote.as_slice())
                .map_err(|e| e.to_string())
        }) {
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
    };

    let quote = match Quote::parse(evidence.tpm.quote.as_slice()) {
        Ok(quote) => quote,
        Err(e) => {
            checks.fail("tpm.quote.format", e.to_string());
            return Some(ak);
        }
    };
    let expected = qualifying_data(&evidence.bound_nonce());
    checks.compare(
        "tpm.quote.nonce",
        quote.extra_data == expected,
        "the quote's qualifying data is SHA-256(\"cvm-tpm-quote/v1\\0\" || nonce)",
        hex::encode(expected),
        hex::encode(&quote.extra_data),
    );

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
    let digest_ok = match pcr_digest(&quote, &banks, hash) {
        Ok(digest) => {
            let ok = digest == quote.pcr_digest;
            checks.compare(
                "tpm.quote.pcr_digest",
                ok,
                "the reported PCR values hash to the digest the TPM signed",
                hex::encode(&quote.pcr_digest),
                hex::encode(&digest),
            );
            ok
        }
        Err(e) => {
            checks.fail("tpm.quote.pcr_digest", e.to_string());
            false
        }
    };
    facts.quoted_selection = quote
        .selections
        .iter()
        .filter(|s| s.hash == HashAlg::Sha256)
        .flat_map(|s| s.pcrs.iter().copied())
        .collect();
    if signature_ok && digest_ok && evidence.tpm.pcrs.hash == HashAlg::Sha256 {
        facts.quoted_pcrs = Some(bank);
    }
    Some(ak)
}

fn attestation_key(
    evidence: &Evidence,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> Option<AkPublic> {
    if evidence.platform().cloud == Cloud::Azure {
        let Some(var_data) = azure_var_data(evidence) else {
            checks.fail(
                "tpm.ak",
                "Azure evidence without var_data: the AK cannot be established",
            );
            return None;
        };
        return match ak_from_var_data(&var_data) {
            Ok(key) => {
                checks.pass(
                    "tpm.ak",
                    "AK is HCLAkPub from Azure's var_data, which the hardware report binds",
                );
                Some(AkPublic {
                    key,
                    object_attributes: None,
                    tpmt_public: None,
                    name_alg: None,
                })
            }
            Err(e) => {
                checks.fail("tpm.ak", e.to_string());
                None
            }
        };
    }
    let ak = match AkPublic::from_bytes(evidence.tpm.ak_pub.as_slice()) {
        Ok(ak) => ak,
        Err(e) => {
            checks.fail("tpm.ak", e.to_string());
            return None;
        }
    };
    let pinned = options.trusted_ak.as_deref() == Some(evidence.tpm.ak_pub.as_slice());
    match ak.is_restricted_signing_key() {
        Some(true) => checks.pass(
            "tpm.ak",
            "AK is a restricted, fixedTPM signing key: it signs only TPM-generated structures",
        ),
        Some(false) => checks.fail(
            "tpm.ak",
            "AK is not a restricted fixedTPM signing key: it could sign a forged quote",
        ),
        None if pinned => checks.pass(
            "tpm.ak",
            "AK given without TPM attributes, pinned by the caller",
        ),
        None => checks.fail(
            "tpm.ak",
            "AK given without TPM attributes (send TPMT_PUBLIC): cannot tell it is restricted",
        ),
    }
    Some(ak)
}

/// Without a TEE, only a caller-pinned AK can vouch for the TPM.
pub(crate) fn verify_without_tee(
    evidence: &Evidence,
    options: &VerifyOptions,
    checks: &mut Checks,
) {
    match &options.trusted_ak {
        Some(pinned) if pinned.as_slice() == evidence.tpm.ak_pub.as_slice() => checks.pass(
            "tee.none",
            "no TEE on this platform: the TPM is trusted because its AK equals the one the caller \
             pinned (recorded when the VM and its software TPM were created)",
        ),
        Some(_) => checks.fail(
            "tee.none",
            "no TEE, and the AK is not the one the caller pinned: another TPM answered",
        ),
        None => checks.fail(
            "tee.none",
            "no TEE evidence and no pinned AK: nothing vouches for this TPM",
        ),
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
                format!("PCR {index} equals the golden value ({source})"),
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

//! AWS's trust basis: the NitroTPM attestation document, signed by AWS's Nitro PKI (root G1
//! pinned in the code, `crate::nitro`). It carries the NitroTPM's own PCRs (SHA-384 bank) and the
//! `user_data` the agent asked it to sign, naming the AK and the quote to come.
//!
//! Why that vouches for the AK: AWS, not the guest, reports the PCRs. When they show the golden
//! boot chain, the agent that asked is the measured one, and it names only its own TPM's AK. So
//! the document's PCRs are compared with the golden's SHA-384 values here, before the AK is
//! trusted; a golden without them cannot vouch for anything on AWS.

use super::ak::{read, Refused, TrustedAk};
use super::report::{Checks, Claim};
use super::{AkBinding, VerifyOptions};
use crate::binding::nitro_user_data;
use crate::evidence::Evidence;
use crate::golden::GoldenMeasurement;
use crate::nitro::{verify_document, NitroDigest, NitroDocument};
use crate::tpm::HashAlg;

/// Boot-chain PCRs the document must show with their golden SHA-384 values.
const BOOT_CHAIN: [u8; 4] = [4, 9, 11, 12];

pub(crate) fn ak(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> Result<TrustedAk, Refused> {
    let key = read(evidence)?;
    let refuse = |reason: String| Refused {
        key: Some(key.clone()),
        reason,
    };
    let Some(bytes) = &evidence.tpm.nitro_document else {
        return Err(refuse(
            "AWS evidence without the NitroTPM attestation document: a key the evidence \
             supplies vouches for nothing"
                .into(),
        ));
    };
    let document = verify_document(bytes.as_slice(), &options.nitro_roots, options.at_unix)
        .map_err(|e| refuse(format!("NitroTPM document: {e}")))?;
    if document.digest != NitroDigest::Sha384 {
        return Err(refuse(format!(
            "the NitroTPM document's PCRs are {}, not SHA384 as AWS documents them",
            document.digest.name()
        )));
    }
    let bound = evidence.bound_nonce();
    if document.nonce.as_deref() != Some(bound.as_slice()) {
        return Err(refuse(
            "the NitroTPM document does not answer this nonce: it may be replayed".into(),
        ));
    }
    let expected = nitro_user_data(
        evidence.tpm.ak_pub.as_slice(),
        &evidence.quote_qualifying_data(),
    );
    if document.user_data.as_deref() != Some(expected.as_slice()) {
        return Err(refuse(
            "the NitroTPM document's user_data does not name this AK and quote".into(),
        ));
    }
    if !boot_chain_matches(&document, evidence, golden, checks) {
        return Err(refuse(
            "the NitroTPM document's PCRs do not show the golden boot chain (see nitro.pcrs): \
             the agent that named this AK is not known to be the measured one"
                .into(),
        ));
    }
    let root = if document.root_is_test_only {
        format!("TEST-ONLY root {} named by the caller", document.root)
    } else {
        format!("{}, pinned", document.root)
    };
    Ok(TrustedAk {
        key,
        binding: AkBinding::NitroDocument {
            module_id: document.module_id,
            root,
        },
    })
}

/// `nitro.pcrs`: the document's SHA-384 PCRs show the golden boot chain: by value when the golden
/// has SHA-384 values for PCR 4, 9, 11, 12 (a golden for this firmware), else by the build's boot
/// events found in the firmware's log, which must replay (SHA-384) to the document's PCRs: AWS's
/// firmware adds its own events, so values predicted from the build alone need not match there.
fn boot_chain_matches(
    document: &NitroDocument,
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    checks: &mut Checks,
) -> bool {
    let all_values = BOOT_CHAIN
        .iter()
        .all(|i| golden.pcrs.get(i).is_some_and(|p| p.sha384.is_some()));
    if all_values || golden.boot_events.is_empty() {
        return boot_chain_values(document, golden, checks);
    }
    let log = evidence.event_logs.firmware.as_ref();
    let result = match log {
        Some(log) => super::boot::firmware_log(
            log.as_slice(),
            Some(&document.pcrs),
            HashAlg::Sha384,
            &golden.boot_events,
        ),
        None => Err(
            "the golden pins the boot chain by events on AWS, and the evidence carries \
                     no firmware event log (event_logs.firmware) to find them in"
                .into(),
        ),
    };
    let ok = result.is_ok();
    checks.result(
        "nitro.pcrs",
        result.map(|r| format!("AWS-signed NitroTPM PCRs (SHA-384): {r}")),
    );
    ok
}

/// `nitro.pcrs` by value: the document's SHA-384 PCRs against the golden's for the boot chain.
fn boot_chain_values(
    document: &NitroDocument,
    golden: &GoldenMeasurement,
    checks: &mut Checks,
) -> bool {
    let (mut expected, mut actual, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for index in BOOT_CHAIN {
        let want = golden.pcrs.get(&index).and_then(|p| p.sha384);
        let got = document.pcrs.get(&index);
        match (want, got) {
            (Some(want), Some(got)) if want.0.as_slice() == got.as_slice() => {}
            (Some(_), Some(_)) => problems.push(format!("PCR {index} differs")),
            (Some(_), None) => problems.push(format!("the document has no PCR {index}")),
            (None, _) => problems.push(format!("the golden has no SHA-384 value for PCR {index}")),
        }
        expected.push(format!(
            "{index}={}",
            want.map(|d| d.to_hex()).unwrap_or_else(|| "?".into())
        ));
        actual.push(format!(
            "{index}={}",
            got.map(hex::encode).unwrap_or_else(|| "none".into())
        ));
    }
    let ok = problems.is_empty();
    checks.compare(
        "nitro.pcrs",
        ok,
        Claim::outcome(if ok {
            "the AWS-signed NitroTPM PCRs 4, 9, 11, 12 (SHA-384) equal the golden boot chain".into()
        } else {
            problems.join("; ")
        }),
        expected.join(" "),
        actual.join(" "),
    );
    ok
}

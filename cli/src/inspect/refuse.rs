//! What a file that inspect cannot read looks like, so the refusal helps: "a text file ...",
//! "JSON object with keys ... that is not ...", "N bytes of binary data ...".

use cvm_attestation::golden::GoldenError;
use cvm_attestation::snp::report::REPORT_LEN;

/// The formats inspect reads, for the end of a refusal.
const READS: &str = "inspect reads SEV-SNP/HCL reports, TDX and TPM quotes, TCG2 and CC event \
                     logs, X.509 certificates, public keys, evidence, workload logs and goldens";

/// JSON that is none of the documents inspect knows.
pub fn json(bytes: &[u8], golden: &GoldenError) -> anyhow::Error {
    let shape = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => {
            let keys: Vec<String> = map.keys().take(8).map(|k| format!("{k:?}")).collect();
            let more = if map.len() > 8 { ", ..." } else { "" };
            format!("a JSON object with keys {}{more}", keys.join(", "))
        }
        Ok(serde_json::Value::String(_)) => "a JSON string".into(),
        Ok(_) => "JSON that is not an object".into(),
        Err(e) => format!("text that starts like JSON but does not parse ({e})"),
    };
    anyhow::anyhow!(
        "{shape}: not evidence, a workload event log, measurements.json or TDX collateral, and \
         not a golden measurement ({golden})"
    )
}

/// Anything else: text or binary, described.
pub fn other(bytes: &[u8]) -> anyhow::Error {
    let hint = if bytes.is_empty() || pem_label(bytes).is_some() {
        ""
    } else if is_text(bytes) {
        " (reports and quotes may be hex text; evidence, goldens and logs are JSON)"
    } else {
        " (none of their magic numbers or sizes matches)"
    };
    anyhow::anyhow!(
        "{}, not any format inspect reads{hint}; {READS}",
        looks_like(bytes)
    )
}

/// What the bytes look like: "an empty file", "a text file (3 lines, starting ...)", "a PEM
/// file with a ... block", "N bytes of binary data starting ...".
pub fn looks_like(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".into();
    }
    if let Some(label) = pem_label(bytes) {
        return format!("a PEM file with a {label:?} block");
    }
    if is_text(bytes) {
        let text = String::from_utf8_lossy(bytes);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let first: String = first.trim().chars().take(60).collect();
        return format!(
            "a text file ({} lines, starting {first:?})",
            text.lines().count()
        );
    }
    let head = hex::encode(&bytes[..bytes.len().min(8)]);
    let size = if bytes.len() < REPORT_LEN {
        format!("too short for a SEV-SNP report ({REPORT_LEN} bytes)")
    } else {
        format!("not {REPORT_LEN} bytes like a bare SEV-SNP report")
    };
    format!(
        "{} bytes of binary data starting {head} ({size})",
        bytes.len()
    )
}

/// UTF-8 without control characters other than whitespace.
pub fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes)
        .is_ok_and(|text| text.chars().all(|c| !c.is_control() || c.is_whitespace()))
}

fn pem_label(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let end = text[start..].find("-----")?;
    Some(text[start..start + end].to_owned())
}

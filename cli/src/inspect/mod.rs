//! `cvm-cli inspect FILE`: says what a file is and prints it readably (or as JSON). Reports and
//! quotes (SEV-SNP, Azure HCL, TDX, TPM), TCG2 firmware event logs and TDX CC event logs with
//! the registers they replay to, X.509 certificates (AMD VCEK/VLEK/ASK/ARK, Intel PCK, Google AK
//! certificates), public keys (SPKI, TPMT_PUBLIC), evidence, workload event logs, goldens. Like
//! `snpguest display`, for everything this toolkit handles; a file it cannot read is named by
//! what it looks like.

mod eventlog;
mod refuse;
mod reports;
mod x509;

use anyhow::{Context, Result};
use clap::Args;
use cvm_attestation::GoldenMeasurement;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;

/// Largest file read: the largest format (an image archive) stays well below.
const MAX_INSPECT_BYTES: u64 = 256 << 20;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The file to inspect (binary, PEM, JSON; hex text of a report or quote is accepted too).
    file: PathBuf,
    /// Print JSON instead of text (`{"kind", "content"}`).
    #[arg(long)]
    json: bool,
}

/// What a file was found to be.
pub struct Found {
    pub kind: String,
    pub value: Value,
    /// A rendering better than the generic one (event logs: one line per event).
    pub text: Option<String>,
}

impl Found {
    pub fn new(kind: impl Into<String>, value: Value) -> Self {
        Self {
            kind: kind.into(),
            value,
            text: None,
        }
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    let bytes = read_bounded(&args.file)?;
    crate::output::detail(format_args!(
        "{}: {} bytes",
        args.file.display(),
        bytes.len()
    ));
    let found = describe(&bytes).with_context(|| format!("{}", args.file.display()))?;
    if args.json || crate::output::json() {
        let document = json!({ "kind": found.kind, "content": found.value });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!("{}", found.kind);
        match &found.text {
            Some(text) => print!("{text}"),
            None => print_value(&found.value, 1),
        }
    }
    Ok(())
}

fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INSPECT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_INSPECT_BYTES,
        "{} is larger than {} MiB, more than any format inspect reads",
        path.display(),
        MAX_INSPECT_BYTES >> 20
    );
    Ok(bytes)
}

/// Detects what `bytes` are and renders them; an error names what the file looks like.
pub fn describe(bytes: &[u8]) -> Result<Found> {
    if let Some(found) = reports::binary(bytes) {
        return found;
    }
    if let Some(found) = eventlog::tcg_log(bytes) {
        return found;
    }
    if let Some(found) = x509::certificates(bytes) {
        return found;
    }
    if let Some(found) = x509::public_key(bytes) {
        return Ok(found);
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"{") || trimmed.starts_with(b"\"") {
        if let Some(found) = reports::json_document(bytes) {
            return Ok(found);
        }
        let golden_error = match GoldenMeasurement::from_json(bytes) {
            Ok(golden) => {
                return Ok(Found::new(
                    "golden measurement",
                    serde_json::to_value(golden)?,
                ))
            }
            Err(error) => error,
        };
        if let Some(found) = other_json(bytes) {
            return Ok(found);
        }
        return Err(refuse::json(bytes, &golden_error));
    }
    Err(refuse::other(bytes))
}

/// JSON other tools of this toolkit write or read: an image build's measurements.json, TDX
/// collateral.
fn other_json(bytes: &[u8]) -> Option<Found> {
    if let Ok(measurements) = cvm_attestation::measurements::Measurements::from_json(bytes) {
        let value = serde_json::to_value(&measurements).unwrap_or(Value::Null);
        return Some(Found::new(
            "image build measurements (measurements.json)",
            value,
        ));
    }
    let collateral = cvm_attestation::tdx::TdxCollateral::from_json(bytes).ok()?;
    Some(Found::new(
        "TDX collateral (TCB info, QE identity, CRLs)",
        serde_json::to_value(&collateral).unwrap_or(Value::Null),
    ))
}

fn print_value(value: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        println!("{pad}{key}:");
                        print_value(item, depth + 1);
                    }
                    _ => println!("{pad}{key}: {}", scalar(item)),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        println!("{pad}-");
                        print_value(item, depth + 1);
                    }
                    _ => println!("{pad}- {}", scalar(item)),
                }
            }
        }
        other => println!("{pad}{}", scalar(other)),
    }
}

/// A scalar for the text output; long or multi-line strings (CRLs, PEM) shortened unless -v.
fn scalar(value: &Value) -> String {
    const LONG: usize = 160;
    let verbose = crate::output::verbosity() >= crate::output::Verbosity::Verbose;
    match value {
        Value::String(s) if !verbose && (s.len() > LONG || s.contains('\n')) => {
            let first: String = s.lines().next().unwrap_or("").chars().take(64).collect();
            format!("{first}... ({} characters; -v shows all)", s.len())
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// For `verify --report`: refuses a text file that cannot be a report (not hex, not JSON) up
/// front, naming what it looks like, instead of failing later on a missing --vcek or a size.
pub fn check_report_input(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    let body = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let hex = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    let json = trimmed.starts_with('{') || trimmed.starts_with('"');
    if !bytes.is_empty() && (!refuse::is_text(bytes) || hex || json) {
        return Ok(()); // binary, hex or JSON: the parsers say what is wrong with it
    }
    anyhow::bail!(
        "{} is {}, not a report: --report takes a SEV-SNP report (1184 bytes, binary or hex), an \
         Azure HCL report, a TDX quote (binary or hex) or an evidence file",
        path.display(),
        refuse::looks_like(bytes)
    )
}

//! `cvm-cli update-workload`: replaces a running VM's workload. The folder is packed fresh on every
//! call (the predecessor uploaded stale archives), checked locally the way the agent will measure
//! it, optionally preceded by a full verification of the VM, and sent with the bearer token.

use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::workload::{pack_folder, WorkloadFolder};
use cvm_attestation::VerificationReport;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cvm-cli update-workload --host 203.0.113.7 --token-file token --workload ./workload\n  \
    cvm-cli update-workload --host vm:8000 --token-file token --golden golden.json\n  \
    cvm-cli 203.0.113.7 <API TOKEN>          (the predecessor's form: uploads ./workload)"
)]
pub struct UpdateArgs {
    /// The VM's agent (HOST[:PORT], default port 8000).
    #[arg(long, visible_alias = "vm_ip")]
    pub host: String,
    /// File holding the API token (preferred: a token on the command line is visible to other
    /// users of this machine).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The API token itself.
    #[arg(long, visible_alias = "api_token")]
    pub token: Option<String>,
    /// The workload folder to upload: docker-compose.yml, config/, secrets/, image archives.
    #[arg(long, default_value = "workload")]
    pub workload: PathBuf,
    /// Verify the VM against this golden measurement first, and upload only if it passes.
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// With --golden on a VM without a TEE: the AK recorded when its TPM was created.
    #[arg(long, requires = "golden")]
    pub trusted_ak: Option<PathBuf>,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Collateral for --golden's verification (as `verify`'s: the cache, else the services).
    #[command(flatten)]
    pub collateral: crate::collateral::ResolveArgs,
}

pub fn run(args: UpdateArgs) -> Result<bool> {
    let base = crate::http::base_url(&args.host, 8000)?;
    // Verifying pins the agent's TLS key so the token goes only to the verified VM; plain HTTP
    // has no key to pin, and the token would travel in the clear to whatever answers.
    if args.golden.is_some() && base.starts_with("http://") {
        bail!(
            "--golden with plain http:// ({base}): the verification cannot be bound to the \
             connection and the API token would travel in the clear. Use https:// (the agent's \
             TLS port, `--host HOST:PORT` defaults to https)"
        );
    }
    let token = read_token(&args)?;
    let archive = pack(&args.workload)?;
    let json = args.json || crate::output::json();
    // The TLS key the token may go to: the one the verified evidence binds, else (unverified)
    // the one the first connection presents.
    let (pin, verification) = match &args.golden {
        Some(golden) => verify_first(&args, golden, json)?,
        None => {
            crate::output::warn(format_args!(
                "uploading without verifying the VM first (give --golden): the token goes to \
                 whatever answers at {}",
                args.host
            ));
            (None, None)
        }
    };
    let (status, answer) = upload(&base, &token, archive, pin)?;
    if json {
        // One document: the checks the upload depended on, and the agent's answer.
        crate::output::print_json(
            &serde_json::json!({ "verification": verification, "status": status, "answer": answer }),
        )?;
    }
    if status != 200 {
        bail!(
            "{base}/update-workload: HTTP {status}: {}",
            answer["error"].as_str().unwrap_or(&answer.to_string())
        );
    }
    if !json {
        println!(
            "workload updated; PCR 23 is now {}",
            answer["pcr23"].as_str().unwrap_or("?")
        );
        println!(
            "verify it with: cvm-cli verify --host {} --golden <golden with --allow-updates>",
            args.host
        );
    }
    Ok(true)
}

fn read_token(args: &UpdateArgs) -> Result<String> {
    let token = match (&args.token_file, &args.token) {
        (Some(path), None) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(token)) => token.clone(),
        _ => bail!("give --token-file FILE (or --token)"),
    };
    Ok(token.trim().to_owned())
}

/// The folder packed, after refusing locally what the agent would refuse.
fn pack(workload: &Path) -> Result<Vec<u8>> {
    let folder = WorkloadFolder::read(workload)
        .with_context(|| format!("workload {}", workload.display()))?;
    let archive = pack_folder(workload)?;
    crate::output::progress(format_args!(
        "packed {} ({} services, {} config files, {} KiB)",
        workload.display(),
        folder.services.len(),
        folder.config_files.len(),
        archive.len() / 1024
    ));
    Ok(archive)
}

/// Verifies the VM against `golden` (collateral as `verify` gets it); fails unless it passes.
/// Returns the TLS key the evidence binds, and (with `--json`) the checks.
fn verify_first(
    args: &UpdateArgs,
    golden: &Path,
    json: bool,
) -> Result<(Option<[u8; 32]>, Option<VerificationReport>)> {
    let resolver = args
        .collateral
        .resolver(false, format!("--host {}", args.host))?;
    let target = crate::verify::Target {
        host: &args.host,
        golden,
        output: match json {
            true => crate::verify::ReportOutput::Returned,
            false => crate::verify::ReportOutput::Text,
        },
        resolver: &resolver,
    };
    let verdict = crate::verify::verify_host_with(target, args.trusted_ak.as_deref())?;
    let verification = json.then(|| verdict.report.clone());
    if !verdict.verified {
        if let Some(report) = &verification {
            crate::output::print_json(&serde_json::json!({ "verification": report }))?;
        }
        bail!(
            "the VM did not verify against {}: nothing was uploaded",
            golden.display()
        );
    }
    Ok((verdict.tls_key, verification))
}

/// Sends the archive with the token to `pin` (else to the key the first connection presents);
/// the status and the agent's answer.
fn upload(
    base: &str,
    token: &str,
    archive: Vec<u8>,
    pin: Option<[u8; 32]>,
) -> Result<(u16, serde_json::Value)> {
    let url = format!("{base}/update-workload");
    crate::output::detail(format_args!("uploading to {url}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if pin.is_none() && base.starts_with("http://") {
        crate::output::warn("plain HTTP: the API token travels in the clear");
    }
    // The agent refuses a wrong token before reading a body: check it with a small request first.
    let check = runtime.block_on(crate::http::request(
        "GET",
        &format!("{base}/container-logs?name=-"),
        &[("Authorization", format!("Bearer {token}"))],
        Vec::new(),
        1 << 20,
        Duration::from_secs(30),
        pin,
    ))?;
    if check.status == 401 || check.status == 403 {
        bail!(
            "{base}: HTTP {}: the agent refused the API token; nothing was uploaded",
            check.status
        );
    }
    let response = runtime.block_on(crate::http::request(
        "POST",
        &url,
        &[
            ("Authorization", format!("Bearer {token}")),
            ("Content-Type", "application/x-tar".into()),
        ],
        archive,
        1 << 20,
        Duration::from_secs(900),
        pin.or(check.tls_key),
    ))?;
    let body = response.body;
    let answer: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
    Ok((response.status, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_over_plain_http_is_refused_before_anything_is_sent() {
        let workload = tempfile::tempdir().unwrap();
        let args = UpdateArgs {
            host: "http://127.0.0.1:1".into(),
            token_file: None,
            token: Some("secret".into()),
            workload: workload.path().into(),
            golden: Some("golden.json".into()),
            trusted_ak: None,
            json: false,
            collateral: Default::default(),
        };
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("https://"), "{err}");
        assert!(err.contains("plain http://"), "{err}");
    }
}

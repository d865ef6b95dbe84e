//! `cvm-cli unlock`: sends a VM its pushed data key (docs/data-at-rest.md), only after verifying
//! it: a fresh nonce, the golden's boot chain and every other check, and a workload log that shows
//! the VM locked (its empty generation: the token's commitment and `locked`, nothing run). The key
//! then goes over the TLS connection whose key the verified evidence binds, with the API token.
//! A VM already unlocked must meet the whole golden instead, and is sent nothing.

use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::golden::{GoldenMeasurement, GoldenWorkload};
use cvm_attestation::workload::data::key_commitment;
use cvm_attestation::workload::{DataState, TokenCommitment, WorkloadEvent};
use cvm_attestation::Evidence;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    openssl rand 32 > data.key   # once per deployment; keep it: /data opens only with it\n  \
    cvm-cli golden --measurements out/debian/measurements.json --workload workload \\\n    \
    --token-file TOKEN --token-salt eventlog.json --data-unlock pushed --data-key-file data.key \\\n    \
    --out golden.json\n  \
    cvm-cli unlock --host 127.0.0.1:18000 --golden golden.json --key-file data.key \\\n    \
    --token-file TOKEN --trusted-ak ak.pub")]
pub struct UnlockArgs {
    /// The VM's agent (HOST[:PORT], default port 8000).
    #[arg(long)]
    pub host: String,
    /// The golden measurement the VM must meet; its workload part is what runs after the unlock,
    /// so before it the VM must show only its locked, empty generation.
    #[arg(long)]
    pub golden: PathBuf,
    /// The data key: 32 or 64 random bytes (e.g. `openssl rand 32`).
    #[arg(long)]
    pub key_file: PathBuf,
    /// File holding the VM's API token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// On a VM without a TEE: the AK recorded when its TPM was created.
    #[arg(long)]
    pub trusted_ak: Option<PathBuf>,
    /// Collateral for the verification (as `verify`'s: the cache, else the services).
    #[command(flatten)]
    pub collateral: crate::collateral::ResolveArgs,
}

pub fn run(args: UnlockArgs) -> Result<bool> {
    let base = crate::http::base_url(&args.host, 8000)?;
    if base.starts_with("http://") {
        bail!(
            "{base}: a data key goes only over TLS to the key the verified evidence binds: use \
             the agent's https address"
        );
    }
    let key = std::fs::read(&args.key_file)
        .with_context(|| format!("reading {}", args.key_file.display()))?;
    let commitment =
        key_commitment(&key).with_context(|| format!("{}", args.key_file.display()))?;
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_owned();
    check_golden_key(&args.golden, commitment)?;
    // Unlocked already: the VM must meet the whole golden (what runs after the unlock), and then
    // nothing is sent (a second unlock is a no-op).
    let already = std::cell::Cell::new(false);
    let adjust = |golden: &mut GoldenMeasurement, evidence: &Evidence| {
        if unlocked(evidence) {
            already.set(true);
        } else {
            golden.workload = Some(GoldenWorkload::new(locked_generation(evidence, &token)?));
        }
        Ok(())
    };
    let resolver = args
        .collateral
        .resolver(false, format!("--host {}", args.host))?;
    let target = crate::verify::Target {
        host: &args.host,
        golden: &args.golden,
        output: crate::verify::ReportOutput::for_caller(),
        resolver: &resolver,
    };
    let verdict = crate::verify::verify_host_adjusted(target, args.trusted_ak.as_deref(), &adjust)?;
    let state = if already.get() {
        "unlocked"
    } else {
        "a locked VM"
    };
    if !verdict.verified {
        eprintln!(
            "the VM did not verify against {} as {state} (failed checks above): the key was not \
             sent",
            args.golden.display()
        );
        Unlocked::new(&verdict, false, None).print_json()?;
        return Ok(false);
    }
    if already.get() {
        crate::output::result_line(
            "/data was unlocked already with this key: nothing sent, nothing changed",
        );
        Unlocked::new(&verdict, false, None).print_json()?;
        return Ok(true);
    }
    let answer = send(&args.host, &token, &key, verdict.tls_key)?;
    Unlocked::new(&verdict, true, Some(answer)).print_json()?;
    Ok(true)
}

/// `unlock`'s result with `--json`: the checks, whether the key went, and the agent's answer.
#[derive(serde::Serialize)]
struct Unlocked<'a> {
    verification: &'a cvm_attestation::VerificationReport,
    key_sent: bool,
    answer: Option<serde_json::Value>,
}

impl<'a> Unlocked<'a> {
    fn new(
        verdict: &'a crate::verify::HostVerdict,
        key_sent: bool,
        answer: Option<serde_json::Value>,
    ) -> Self {
        Self {
            verification: &verdict.report,
            key_sent,
            answer,
        }
    }

    fn print_json(&self) -> Result<()> {
        match crate::output::json() {
            true => crate::output::print_json(self),
            false => Ok(()),
        }
    }
}

/// A golden made for another key would never verify after the unlock: refuse before sending.
fn check_golden_key(
    path: &std::path::Path,
    commitment: cvm_attestation::Sha256Digest,
) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let golden =
        GoldenMeasurement::from_json(&bytes).with_context(|| format!("{}", path.display()))?;
    let recorded = golden
        .workload
        .iter()
        .flat_map(|w| w.events.iter())
        .find_map(DataState::of);
    match recorded {
        Some(DataState::Pushed(c)) if c == commitment => Ok(()),
        Some(DataState::Pushed(_)) => bail!(
            "{}: its workload measurement commits to another data key than --key-file",
            path.display()
        ),
        _ => bail!(
            "{}: its workload measurement has no pushed data key (make it with `cvm-cli golden \
             --data-unlock pushed --data-key-file ...`)",
            path.display()
        ),
    }
}

/// Whether the VM's log shows `/data` opened with a pushed key (the golden then says with which).
fn unlocked(evidence: &Evidence) -> bool {
    evidence.event_logs.workload.as_ref().is_some_and(|log| {
        log.events
            .iter()
            .any(|event| matches!(DataState::of(event), Some(DataState::Pushed(_))))
    })
}

/// The generation a locked VM shows: its token's commitment (under the salt its log publishes;
/// the quote vouches for the log), `locked`, the separator.
fn locked_generation(evidence: &Evidence, token: &str) -> Result<Vec<WorkloadEvent>> {
    let log = evidence
        .event_logs
        .workload
        .as_ref()
        .context("the evidence has no workload log")?;
    let salt = TokenCommitment::first_salt(&log.events)
        .context("the workload log has no api-token event: the VM has no API token")?;
    Ok(vec![
        TokenCommitment::new(salt, token).event(),
        DataState::Locked.event(),
        WorkloadEvent::separator(),
    ])
}

/// Sends the key; returns the agent's answer.
fn send(host: &str, token: &str, key: &[u8], pin: Option<[u8; 32]>) -> Result<serde_json::Value> {
    let base = crate::http::base_url(host, 8000)?;
    if pin.is_none() {
        bail!("{base}: no TLS key bound into the verified evidence: a data key is never sent in the clear");
    }
    let body = serde_json::json!({ "key": cvm_attestation::encoding::encode_base64(key) });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(crate::http::request(
        "POST",
        &format!("{base}/unlock"),
        &[
            ("Authorization", format!("Bearer {token}")),
            ("Content-Type", "application/json".into()),
        ],
        body.to_string().into_bytes(),
        1 << 20,
        Duration::from_secs(900),
        pin,
    ))?;
    let answer: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).into());
    if response.status != 200 {
        bail!(
            "{base}/unlock: HTTP {}: {}",
            response.status,
            answer["error"].as_str().unwrap_or(&answer.to_string())
        );
    }
    if answer["already_unlocked"] == true {
        crate::output::result_line("/data was unlocked already: nothing changed");
    } else {
        crate::output::result_line(format_args!(
            "/data unlocked; the workload on it is measured and started (PCR 23 {})",
            answer["pcr23"].as_str().unwrap_or("?")
        ));
    }
    Ok(answer)
}

//! `cvm-agent`: the in-guest attestation sidecar.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use cvm_agent::config::Config;
use cvm_agent::provision::{self, Options};
use cvm_agent::Agent;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "cvm-agent",
    version,
    about = "Measures the workload into TPM PCR 23, runs it, and serves attestation evidence.",
    after_help = "Every setting can also come from the environment (CVM_AGENT_WORKLOAD_DIR, \
                  CVM_AGENT_TCTI, CVM_AGENT_ENGINE_SOCKET, CVM_AGENT_CLOUD, CVM_AGENT_TEE, ...). \
                  See docs/agent.md.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Configuration file (TOML); it must exist when given. Default: /etc/cvm-agent/config.toml
    /// when it exists, else the built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the resolved configuration (file, environment and defaults) as TOML and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Read when it exists and no `--config` is given.
const DEFAULT_CONFIG: &str = "/etc/cvm-agent/config.toml";

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the API token the platform provides to OUT for the agent's unit, then exit.
    ///
    /// The source follows the detected platform (DMI sys_vendor): QEMU fw_cfg opt/cvm/api-token,
    /// Azure IMDS userData, GCP metadata attribute cvm-agent, AWS IMDSv2 user-data. The token goes
    /// to OUT/api-token (0600) and OUT/agent.env names it; without a token agent.env is empty.
    Provision(ProvisionArgs),
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    /// Output directory (0700): api-token and agent.env.
    #[arg(long, default_value = provision::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// The metadata service's base URL (tests only).
    #[arg(long, hide = true, default_value = provision::DEFAULT_METADATA_URL)]
    metadata_url: String,
    /// The sysfs root holding DMI and fw_cfg (tests only).
    #[arg(long, hide = true, default_value = "/sys")]
    sysfs_root: PathBuf,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Some(Command::Provision(args)) = cli.command {
        return Ok(run_provision(args).await);
    }
    // A file named on the command line must be read (a typo must not mean "defaults"); only the
    // default location may be absent.
    let default = PathBuf::from(DEFAULT_CONFIG);
    let path = match &cli.config {
        Some(path) => Some(path.as_path()),
        None => default.exists().then_some(default.as_path()),
    };
    let config = Config::load(path)?;
    if cli.check_config {
        print!("{}", config.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let agent = Agent::start(config).await?;
    tokio::select! {
        // A listener stopped for good: exit non-zero, so systemd (Restart=on-failure) restarts
        // the agent instead of leaving it up without its API.
        stopped = agent.wait() => stopped?,
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per outcome (the unit sends it to the serial console too).
async fn run_provision(args: ProvisionArgs) -> ExitCode {
    let options = Options {
        out: args.out,
        metadata_url: args.metadata_url,
        sysfs_root: args.sysfs_root,
        ..Options::default()
    };
    match provision::provision(&options).await {
        Ok(outcome) => {
            println!("cvm-agent provision: {outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cvm-agent provision: {e}: update routes stay off");
            ExitCode::FAILURE
        }
    }
}

//! `cvm-agent`: the in-guest attestation sidecar.

use anyhow::Result;
use clap::Parser;
use cvm_agent::config::Config;
use cvm_agent::Agent;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cvm-agent",
    version,
    about = "Measures the workload into TPM PCR 23, runs it, and serves attestation evidence.",
    after_help = "Every setting can also come from the environment (CVM_AGENT_WORKLOAD_DIR, \
                  CVM_AGENT_TCTI, CVM_AGENT_ENGINE_SOCKET, CVM_AGENT_CLOUD, CVM_AGENT_TEE, ...). \
                  See docs/agent.md."
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "/etc/cvm-agent/config.toml")]
    config: PathBuf,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let path = cli.config.exists().then_some(cli.config.as_path());
    let config = Config::load(path)?;
    if cli.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let agent = Agent::start(config).await?;
    tokio::select! {
        () = agent.wait() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
    }
    Ok(())
}

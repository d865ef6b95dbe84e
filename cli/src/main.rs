//! `cvm-cli`: verify confidential VMs from outside and inspect attestation data.

mod golden;
mod http;
mod inspect;
mod local;
mod time;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cvm-cli", version, about = "Deploy confidential VMs and verify them from outside.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify evidence against a golden measurement, or a bare SEV-SNP / Azure HCL report
    /// against AMD's pinned roots. Every check is printed with its reason.
    Verify(verify::VerifyArgs),
    /// Boot an image locally in QEMU + OVMF with a software TPM, forward the agent's port, and
    /// record the TPM's attestation key for `verify --trusted-ak`.
    DeployLocal(local::DeployLocalArgs),
    /// Print the attestation key the agent will use on a TPM you created (to pin it).
    TpmAk(local::TpmAkArgs),
    /// Stop and delete what this CLI created.
    Cleanup(local::CleanupArgs),
    /// Compute the golden measurement offline from the image build's measurements.json and the
    /// workload folder.
    Golden(golden::GoldenArgs),
    /// Show what a file is (SNP report, HCL report, TPM quote, event log, evidence, golden) and
    /// print it readably.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of our output goes away (`| head`).
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify(args) => verify::run(args),
        Command::Inspect(args) => inspect::run(args).map(|()| true),
        Command::Golden(args) => golden::run(args).map(|()| true),
        Command::DeployLocal(args) => local::deploy(args).map(|()| true),
        Command::Cleanup(args) => local::cleanup(args).map(|()| true),
        Command::TpmAk(args) => local::tpm_ak(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

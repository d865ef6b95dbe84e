//! `cvm-cli`: verify confidential VMs from outside and inspect attestation data.

mod cleanup;
mod deploy;
mod golden;
mod http;
mod inspect;
mod local;
mod snp_launch;
mod time;
mod update;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cvm-cli", version, about = "Deploy confidential VMs and verify them from outside.", long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The predecessor's `cvm-cli <VM IP> <API TOKEN>`: upload ./workload (see update-workload).
    #[arg(value_name = "VM_IP", requires = "api_token")]
    vm_ip: Option<String>,
    #[arg(value_name = "API_TOKEN")]
    api_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify evidence against a golden measurement, or a bare SEV-SNP / Azure HCL report
    /// against AMD's pinned roots. Every check is printed with its reason.
    Verify(verify::VerifyArgs),
    /// Boot an image locally in QEMU + OVMF with a software TPM, forward the agent's port, and
    /// record the TPM's attestation key for `verify --trusted-ak`.
    DeployLocal(local::DeployLocalArgs),
    /// Replace a running VM's workload: pack the folder fresh, optionally verify the VM first,
    /// upload with the bearer token.
    UpdateWorkload(update::UpdateArgs),
    /// Print the attestation key the agent will use on a TPM you created (to pin it).
    TpmAk(local::TpmAkArgs),
    /// Deploy an image to AWS: EBS snapshot by direct upload, AMI (UEFI, TPM 2.0), security
    /// group, SEV-SNP instance.
    DeployAws(deploy::aws::DeployAwsArgs),
    /// Deploy an image to Azure: managed disk by direct page upload, network, confidential VM
    /// (SEV-SNP or TDX) with vTPM and Secure Boot.
    DeployAzure(deploy::azure::DeployAzureArgs),
    /// Deploy an image to Google Cloud: disk.tar.gz into your bucket, image, firewall rule,
    /// confidential instance (TDX on c3, SEV-SNP on n2d).
    DeployGcp(deploy::gcp::DeployGcpArgs),
    /// Stop and delete what this CLI created (found by deployment name; nothing else).
    Cleanup(cleanup::CleanupArgs),
    /// Compute the golden measurement offline from the image build's measurements.json and the
    /// workload folder.
    Golden(golden::GoldenArgs),
    /// Compute the SEV-SNP launch digest of a QEMU guest offline, from OVMF (+ UKI for a direct
    /// boot with kernel-hashes=on), vCPU count and model.
    SnpLaunchDigest(snp_launch::LaunchInputs),
    /// Show what a file is (SNP report, HCL report, TPM quote, event log, evidence, golden) and
    /// print it readably.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.vm_ip, cli.api_token) {
        (Some(command), _, _) => command,
        (None, Some(host), Some(token)) => Command::UpdateWorkload(update::UpdateArgs {
            host,
            token: Some(token),
            token_file: None,
            workload: "workload".into(),
            golden: None,
            trusted_ak: None,
            json: false,
        }),
        _ => {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Verify(args) => verify::run(args),
        Command::Inspect(args) => inspect::run(args).map(|()| true),
        Command::SnpLaunchDigest(args) => snp_launch::run(args).map(|()| true),
        Command::Golden(args) => golden::run(args).map(|()| true),
        Command::DeployLocal(args) => local::deploy(args).map(|()| true),
        Command::Cleanup(args) => cleanup::run(args).map(|()| true),
        Command::DeployAws(args) => deploy::aws::run(args).map(|()| true),
        Command::DeployAzure(args) => deploy::azure::run(args).map(|()| true),
        Command::DeployGcp(args) => deploy::gcp::run(args).map(|()| true),
        Command::TpmAk(args) => local::tpm_ak(args).map(|()| true),
        Command::UpdateWorkload(args) => update::run(args),
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

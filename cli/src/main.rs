//! `cvm-cli`: verify confidential VMs from outside and inspect attestation data.

mod cleanup;
mod deploy;
mod golden;
mod http;
mod inspect;
mod local;
mod snp_launch;
mod time;
mod unlock;
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
    /// Send a VM that waits with /data locked (data key mode `pushed`) its key, only after
    /// verifying it as a locked VM against the golden measurement (exit 1, nothing sent, if any
    /// check fails).
    Unlock(unlock::UnlockArgs),
    /// Print the attestation key the agent will use on a TPM you created (to pin it).
    TpmAk(local::TpmAkArgs),
    /// Deploy an image to AWS: EBS snapshot by direct upload, AMI (UEFI, TPM 2.0), security
    /// group, SEV-SNP instance.
    DeployAws(deploy::aws::DeployAwsArgs),
    /// Deploy an image to Azure: managed disk by direct page upload, network, confidential VM
    /// (SEV-SNP or TDX) with vTPM; Secure Boot only with --secure-boot.
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

/// The predecessor's positional form is taken only when its first argument is an IP address or
/// HOST:PORT and its second looks like a token; anything else that is not a subcommand is an
/// unknown command, with a suggestion. Without this, `cvm-cli inspct ev.json` packed ./workload
/// and would have sent "ev.json" as a token to a host named "inspct".
fn refuse_unknown_command(args: &[String]) -> Option<String> {
    let first = args.get(1)?;
    if first.starts_with('-') {
        return None;
    }
    let command = <Cli as clap::CommandFactory>::command();
    let names: Vec<String> = command
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_owned()).chain(c.get_all_aliases().map(str::to_owned))
        })
        .chain(["help".to_owned()])
        .collect();
    if names.iter().any(|n| n == first) {
        return None;
    }
    if looks_like_host(first) {
        return match args.get(2) {
            Some(token) if looks_like_token(token) => None,
            Some(_) => Some(format!(
                "`cvm-cli {first} <API TOKEN>`: the second argument does not look like an API \
                 token (at least 16 characters, no spaces, dots or slashes); nothing was sent"
            )),
            None => None, // clap says the token is missing
        };
    }
    let suggestion = names
        .iter()
        .map(|n| (strsim::jaro(first, n), n))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| format!("\n  tip: a similar subcommand exists: '{n}'"))
        .unwrap_or_default();
    Some(format!(
        "unrecognized subcommand '{first}'{suggestion}\n  (the predecessor's `cvm-cli <VM IP> \
         <API TOKEN>` needs an IP address or HOST:PORT first; see `cvm-cli --help`)"
    ))
}

/// An IP address, or HOST:PORT (the agent's address as the predecessor's users typed it).
fn looks_like_host(text: &str) -> bool {
    if text.parse::<std::net::IpAddr>().is_ok() || text.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    })
}

/// A bearer token: long, one word, not a file name or a path.
fn looks_like_token(text: &str) -> bool {
    text.len() >= 16
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '.' | '\\'))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(message) = refuse_unknown_command(&args) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
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
        Command::Unlock(args) => unlock::run(args),
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

#[cfg(test)]
mod positional_form_tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("cvm-cli")
            .chain(list.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn typos_are_unknown_commands_with_a_suggestion() {
        let message = refuse_unknown_command(&args(&["inspct", "ev.json"])).unwrap();
        assert!(
            message.contains("unrecognized subcommand 'inspct'"),
            "{message}"
        );
        assert!(message.contains("'inspect'"), "{message}");
        let message = refuse_unknown_command(&args(&["verfy", "--host", "x"])).unwrap();
        assert!(message.contains("'verify'"), "{message}");
        assert!(refuse_unknown_command(&args(&["frobnicate", "a"]))
            .unwrap()
            .contains("HOST:PORT"));
    }

    #[test]
    fn the_predecessors_form_needs_an_address_and_a_token() {
        let token = "0123456789abcdef0123";
        for host in [
            "10.0.0.4",
            "127.0.0.1:18000",
            "[::1]:8000",
            "vm.example:8000",
        ] {
            assert_eq!(
                refuse_unknown_command(&args(&[host, token])),
                None,
                "{host}"
            );
        }
        assert!(refuse_unknown_command(&args(&["10.0.0.4", "ev.json"])).is_some());
        assert!(refuse_unknown_command(&args(&["10.0.0.4", "short"])).is_some());
        for ok in [
            vec!["verify", "--help"],
            vec!["--version"],
            vec![],
            vec!["help"],
        ] {
            assert_eq!(refuse_unknown_command(&args(&ok)), None, "{ok:?}");
        }
    }
}

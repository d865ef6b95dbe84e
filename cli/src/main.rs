//! `cvm-cli`: verify confidential VMs from outside and inspect attestation data.

mod cleanup;
mod collateral;
mod deploy;
mod golden;
mod http;
mod inspect;
mod local;
mod output;
mod shell;
mod snp_launch;
mod time;
mod unlock;
mod update;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cvm-cli", version = VERSION, about = "Deploy confidential VMs and verify them from outside.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Print only results and errors (no progress).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    quiet: bool,
    /// Print each step in more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    verbose: u8,
    /// Machine-readable output: results as JSON on stdout, errors as one JSON object
    /// `{"error", "causes"}` on stderr.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// The predecessor's `cvm-cli <VM IP> <API TOKEN>`: upload ./workload (see update-workload).
    #[arg(value_name = "VM_IP", requires = "api_token")]
    vm_ip: Option<String>,
    #[arg(value_name = "API_TOKEN")]
    api_token: Option<String>,
}

/// `cvm-cli 0.1.0 (commit 1a2b3c4, built 2026-12-02)`: a bug report names the exact build.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CVM_CLI_COMMIT"),
    ", built ",
    env!("CVM_CLI_BUILD_DATE"),
    ")"
);

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify evidence against a golden measurement, or a bare SEV-SNP / Azure HCL report
    /// against AMD's pinned roots. Every check is printed with its reason.
    Verify(verify::VerifyArgs),
    /// Boot an image locally in QEMU + OVMF with a software TPM, forward the agent's port, and
    /// record the TPM's attestation key for `verify --trusted-ak`.
    DeployLocal(deploy::local::DeployLocalArgs),
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
    /// List the deployments made from this machine, and with --aws/--gcp/--azure what the
    /// cloud still has of each (found by tag).
    List(deploy::list::ListArgs),
    /// Compute the golden measurement offline from the image build's measurements.json and the
    /// workload folder.
    Golden(golden::GoldenArgs),
    /// Compute the SEV-SNP launch digest of a QEMU guest offline, from OVMF (+ UKI for a direct
    /// boot with kernel-hashes=on), vCPU count and model.
    SnpLaunchDigest(snp_launch::LaunchInputs),
    /// Show what a file is and print it readably: SNP/HCL report, TDX or TPM quote, TCG2 or CC
    /// event log (with the registers it replays to), certificate (VCEK/VLEK, PCK, AK), public
    /// key, evidence, golden. A file it cannot read is named by what it looks like.
    Inspect(inspect::InspectArgs),
    /// Fetch, cache, show, export and import AMD and Intel collateral (VCEKs, chains, CRLs, TCB
    /// info, QE identity) for `verify`, also for offline verifiers.
    Collateral(collateral::CollateralArgs),
    /// Print a shell completion script, e.g. `source <(cvm-cli completions bash)`.
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff), or write one page per subcommand with --out-dir.
    Man(shell::ManArgs),
}

/// The global flags, which may stand before the subcommand.
const GLOBAL_FLAGS: &[&str] = &["-q", "--quiet", "-v", "--verbose", "--json"];

/// `--json` anywhere before `--`: known before parsing, so usage errors are JSON too.
fn wants_json(args: &[String]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// The predecessor's positional form is taken only when its first argument is an IP address or
/// HOST:PORT and its second looks like a token; anything else that is not a subcommand is an
/// unknown command, with a suggestion. Without this, `cvm-cli inspct ev.json` packed ./workload
/// and would have sent "ev.json" as a token to a host named "inspct".
fn refuse_unknown_command(args: &[String]) -> Option<String> {
    let at = 1 + args
        .iter()
        .skip(1)
        .take_while(|a| GLOBAL_FLAGS.contains(&a.as_str()) || is_verbose_cluster(a))
        .count();
    let first = args.get(at)?;
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
        return match args.get(at + 1) {
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

/// `-vv`, `-vvv`: repeated verbosity in one argument.
fn is_verbose_cluster(arg: &str) -> bool {
    arg.len() > 2 && arg.starts_with('-') && arg[1..].bytes().all(|b| b == b'v')
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
    output::init(false, 0, wants_json(&args));
    if let Some(message) = refuse_unknown_command(&args) {
        // As JSON, clap's tips (the lines after the first) are the causes.
        let mut lines = message.lines().map(str::trim);
        let (first, tips) = match output::json() {
            true => (
                lines.next().unwrap_or_default(),
                lines.map(str::to_owned).collect(),
            ),
            false => (message.as_str(), Vec::new()),
        };
        output::print_message(first, &tips);
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    output::init(cli.quiet, cli.verbose, cli.json);
    let command = match (cli.command, cli.vm_ip, cli.api_token) {
        (Some(command), _, _) => command,
        (None, Some(host), Some(token)) => Command::UpdateWorkload(update::UpdateArgs {
            host,
            token: Some(token),
            token_file: None,
            workload: "workload".into(),
            golden: None,
            trusted_ak: None,
            json: cli.json,
            collateral: Default::default(),
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
        Command::DeployLocal(args) => deploy::local::run(args).map(|()| true),
        Command::Cleanup(args) => cleanup::run(args).map(|()| true),
        Command::List(args) => deploy::list::run(args).map(|()| true),
        Command::DeployAws(args) => deploy::aws::run(args).map(|()| true),
        Command::DeployAzure(args) => deploy::azure::run(args).map(|()| true),
        Command::DeployGcp(args) => deploy::gcp::run(args).map(|()| true),
        Command::TpmAk(args) => local::tpm_ak(args).map(|()| true),
        Command::UpdateWorkload(args) => update::run(args),
        Command::Unlock(args) => unlock::run(args),
        Command::Collateral(args) => collateral::run(args),
        Command::Completions(args) => shell::completions(args, command_definition()).map(|()| true),
        Command::Man(args) => shell::man(args, command_definition()).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            output::print_error(&error);
            ExitCode::from(2)
        }
    }
}

fn command_definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// clap's usage errors as clap prints them, or with `--json` as `{"error", "causes"}` (the
/// first line, then clap's tips); help and version are printed as usual.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !output::json() || informational {
        let _ = error.print();
        return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
    }
    let text = error.render().to_string();
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"));
    let first = lines.next().unwrap_or("usage error");
    let causes: Vec<String> = lines.map(str::to_owned).collect();
    output::print_message(first.trim_start_matches("error: "), &causes);
    ExitCode::from(2)
}

#[cfg(test)]
mod positional_form_tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        command_definition().debug_assert();
    }

    #[test]
    fn global_flags_do_not_turn_a_subcommand_into_a_host() {
        let cli = Cli::try_parse_from(["cvm-cli", "--json", "-vv", "inspect", "x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Inspect(_))));
        assert!(cli.json && cli.verbose == 2 && cli.vm_ip.is_none());
        let cli = Cli::try_parse_from(["cvm-cli", "10.0.0.4", "0123456789abcdef0123"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.vm_ip.as_deref(), Some("10.0.0.4"));
        assert!(refuse_unknown_command(&args(&["-q", "--json", "inspct", "x"])).is_some());
    }

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

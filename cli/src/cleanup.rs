//! `cvm-cli cleanup`: deletes what one deployment of this CLI created, found by its name (the
//! `cvm-cli-deployment` tag or label in clouds, the state directory locally). Never anything else:
//! not a bucket, not a resource group it did not create.

use crate::deploy;
use crate::output;
use anyhow::Result;
use clap::{ArgGroup, Args};
use serde::Serialize;

/// What `cleanup` did: said line by line as it happens (stdout), and with `--json` printed as one
/// document at the end instead.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Deleted, or with `--dry-run` what would be, in the order it went.
    pub deleted: Vec<Gone>,
    /// What could not be deleted, and why.
    pub failed: Vec<NotGone>,
    /// What it kept or did not find, in its own words.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Gone {
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Serialize)]
pub struct NotGone {
    pub kind: String,
    pub id: String,
    pub error: String,
}

impl Report {
    /// A deletion (or, with `--dry-run`, one that would happen), said as `line`.
    pub fn deleted(&mut self, kind: &str, id: &str, line: impl std::fmt::Display) {
        output::result_line(line);
        let (kind, id) = (kind.to_owned(), id.to_owned());
        self.deleted.push(Gone { kind, id });
    }

    /// A deletion that failed, said as `line` on stderr.
    pub fn failed(&mut self, kind: &str, id: &str, error: &anyhow::Error, line: &str) {
        if !output::json() {
            eprintln!("{line}");
        }
        let (kind, id, error) = (kind.to_owned(), id.to_owned(), format!("{error:#}"));
        self.failed.push(NotGone { kind, id, error });
    }

    /// Anything else worth saying about the outcome.
    pub fn note(&mut self, line: String) {
        output::result_line(&line);
        self.notes.push(line);
    }

    fn is_empty(&self) -> bool {
        self.deleted.is_empty() && self.failed.is_empty() && self.notes.is_empty()
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["local", "aws", "gcp", "azure"])))]
#[command(after_help = "Examples:\n  cvm-cli cleanup --local cvm-local\n  \
    cvm-cli cleanup --aws cvm-test --region us-east-2\n  \
    cvm-cli cleanup --gcp cvm-test --project-id my-project --zone asia-southeast1-b\n  \
    cvm-cli cleanup --azure cvm-test --resource-group cvm-testRg")]
pub struct CleanupArgs {
    /// A local VM started by deploy-local: stop it and delete its state.
    #[arg(long, value_name = "NAME")]
    local: Option<String>,
    /// An AWS deployment: terminate its instance, deregister its AMI, delete its snapshot and
    /// security group (only resources tagged with this name).
    #[arg(long, value_name = "NAME")]
    aws: Option<String>,
    /// A Google Cloud deployment: delete its instance, image, firewall rule and uploaded object
    /// (only resources labelled or named for it; never the bucket). Needs --project-id and
    /// --zone.
    #[arg(long, value_name = "NAME", requires = "project_id")]
    gcp: Option<String>,
    /// An Azure deployment: delete its VM, NIC, public IP, VNet, network security group and disk
    /// (only resources tagged with this name), then its resource group if cvm-cli created it.
    #[arg(long, value_name = "NAME")]
    azure: Option<String>,
    /// The Azure resource group (with --azure; default `<NAME>Rg`).
    #[arg(long, alias = "resource_group")]
    resource_group: Option<String>,
    /// The Azure subscription (with --azure; default AZURE_SUBSCRIPTION_ID or the Azure CLI's).
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    subscription: Option<String>,
    /// The Google Cloud project (with --gcp).
    #[arg(long, alias = "project_id")]
    project_id: Option<String>,
    /// With --gcp: also look in this bucket for the deployment's uploaded objects.
    #[arg(long)]
    bucket: Option<String>,
    /// The AWS region the deployment is in (default us-east-2).
    #[arg(long)]
    region: Option<String>,
    /// The Google Cloud zone the deployment is in (default asia-southeast1-b; --region is
    /// accepted for it too, as the predecessor named it).
    #[arg(long)]
    zone: Option<String>,
    /// Print what would be deleted, delete nothing.
    #[arg(long, alias = "dry_run")]
    dry_run: bool,
}

pub fn run(args: CleanupArgs) -> Result<()> {
    let mut report = Report {
        dry_run: args.dry_run,
        ..Report::default()
    };
    let result = clean(&args, &mut report);
    // A partial report (some deletions failed) is still the record of what went.
    if output::json() && (result.is_ok() || !report.is_empty()) {
        output::print_json(&serde_json::json!({ "cleanup": report }))?;
    }
    result
}

fn clean(args: &CleanupArgs, report: &mut Report) -> Result<()> {
    if let Some(name) = &args.local {
        return deploy::local::cleanup(name, args.dry_run, report);
    }
    if let Some(name) = &args.aws {
        let region = args.region.as_deref().unwrap_or("us-east-2");
        return deploy::aws::cleanup(name, region, args.dry_run, report);
    }
    if let (Some(name), Some(project)) = (&args.gcp, &args.project_id) {
        let zone = args
            .zone
            .as_deref()
            .or(args.region.as_deref())
            .unwrap_or("asia-southeast1-b");
        let bucket = args.bucket.as_deref();
        return deploy::gcp::cleanup(name, project, zone, bucket, args.dry_run, report);
    }
    if let Some(name) = &args.azure {
        return deploy::azure::cleanup(
            name,
            args.resource_group.as_deref(),
            args.subscription.as_deref(),
            args.dry_run,
            report,
        );
    }
    anyhow::bail!("name what to clean up: --local NAME, --aws NAME, --gcp NAME or --azure NAME")
}

//! `cvm-cli cleanup`: deletes what one deployment of this CLI created, found by its name (the
//! `cvm-cli-deployment` tag or label in clouds, the state directory locally). Never anything else:
//! not a bucket, not a resource group it did not create.

use crate::deploy;
use anyhow::Result;
use clap::{ArgGroup, Args};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["local", "aws"])))]
#[command(after_help = "Examples:\n  cvm-cli cleanup --local cvm-local\n  \
    cvm-cli cleanup --aws cvm-test --region us-east-2")]
pub struct CleanupArgs {
    /// A local VM started by deploy-local: stop it and delete its state.
    #[arg(long, value_name = "NAME")]
    local: Option<String>,
    /// An AWS deployment: terminate its instance, deregister its AMI, delete its snapshot and
    /// security group (only resources tagged with this name).
    #[arg(long, value_name = "NAME")]
    aws: Option<String>,
    /// The region (AWS) the deployment is in.
    #[arg(long, default_value = "us-east-2")]
    region: String,
    /// Print what would be deleted, delete nothing.
    #[arg(long, visible_alias = "dry_run")]
    dry_run: bool,
}

pub fn run(args: CleanupArgs) -> Result<()> {
    if let Some(name) = &args.local {
        return crate::local::cleanup(name);
    }
    if let Some(name) = &args.aws {
        return deploy::aws::cleanup(name, &args.region, args.dry_run);
    }
    anyhow::bail!("name what to clean up: --local NAME or --aws NAME")
}

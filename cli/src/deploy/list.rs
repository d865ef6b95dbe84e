//! `cvm-cli list`: the deployments this CLI made from this machine (its state directory: one
//! folder per cloud and name, holding the API token), and with `--aws` / `--gcp` / `--azure`
//! what the cloud still has of each, found by the deployment tag. What a local VM has (its state
//! and the processes still running) costs nothing to find and is always shown.

use super::aws::Aws;
use super::azure::AzureDeploy;
use super::gcp::GcpDeploy;
use super::local::Local;
use super::plan::Resource;
use super::runner::{Cloud, CloudResource};
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cvm-cli list\n  cvm-cli list --aws --region us-east-2\n  \
    cvm-cli list --gcp --project-id my-project --zone asia-southeast1-b --json"
)]
pub struct ListArgs {
    /// Also ask AWS (in --region) what each AWS deployment still has.
    #[arg(long)]
    aws: bool,
    /// Also ask Google Cloud (--project-id, --zone) what each GCP deployment still has.
    #[arg(long, requires = "project_id")]
    gcp: bool,
    /// Also ask Azure what each Azure deployment still has (in its default group `<name>Rg`,
    /// or --resource-group).
    #[arg(long)]
    azure: bool,
    /// AWS region.
    #[arg(long, default_value = "us-east-2")]
    region: String,
    /// Google Cloud project (with --gcp).
    #[arg(long, alias = "project_id")]
    project_id: Option<String>,
    /// Google Cloud zone (with --gcp).
    #[arg(long, default_value = "asia-southeast1-b")]
    zone: String,
    /// Azure resource group (with --azure; default `<name>Rg` per deployment).
    #[arg(long, alias = "resource_group")]
    resource_group: Option<String>,
    /// Azure subscription (with --azure).
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    subscription: Option<String>,
}

/// One deployment known here.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// `aws`, `azure`, `gcp` or `local`.
    pub cloud: String,
    pub name: String,
    pub state_dir: PathBuf,
    /// The API token file, when the deployment has one.
    pub api_token_file: Option<PathBuf>,
    /// What the cloud has of it, by tag (only when asked; `None`: not asked), or what runs of a
    /// local VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Resource>>,
}

/// The deployments in the state directory (`<base>/cvm-cli/<cloud>/<name>`).
pub fn known(base: &Path) -> Result<Vec<Listed>> {
    let mut found = Vec::new();
    let root = base.join("cvm-cli");
    let Ok(clouds) = std::fs::read_dir(&root) else {
        return Ok(found);
    };
    for cloud in clouds.flatten() {
        let cloud_name = cloud.file_name().to_string_lossy().into_owned();
        if !["aws", "azure", "gcp", "local"].contains(&cloud_name.as_str()) {
            continue;
        }
        let Ok(names) = std::fs::read_dir(cloud.path()) else {
            continue;
        };
        for entry in names.flatten().filter(|e| e.path().is_dir()) {
            let token = entry.path().join(super::token::TOKEN_FILE);
            found.push(Listed {
                cloud: cloud_name.clone(),
                name: entry.file_name().to_string_lossy().into_owned(),
                state_dir: entry.path(),
                api_token_file: token.exists().then_some(token),
                resources: None,
            });
        }
    }
    found.sort_by(|a, b| (&a.cloud, &a.name).cmp(&(&b.cloud, &b.name)));
    Ok(found)
}

/// The base of the state directory (`$XDG_STATE_HOME`, else `~/.local/state`).
fn state_base() -> Result<PathBuf> {
    let dir = super::token::state_dir("local", "x")?;
    let base = dir
        .ancestors()
        .nth(3)
        .context("unexpected state directory layout")?;
    Ok(base.to_owned())
}

pub fn run(args: ListArgs) -> Result<()> {
    let mut listed = known(&state_base()?)?;
    tokio::runtime::Runtime::new()?.block_on(ask_clouds(&args, &mut listed))?;
    if crate::output::json() {
        println!("{}", serde_json::json!({ "deployments": listed }));
        return Ok(());
    }
    if listed.is_empty() {
        println!("no deployments made from this machine");
    }
    for deployment in &listed {
        println!(
            "{:<6} {:<24} {}",
            deployment.cloud,
            deployment.name,
            deployment.state_dir.display()
        );
        for resource in deployment.resources.iter().flatten() {
            println!("         {} {}", resource.kind, resource.id);
        }
        if deployment.cloud != "local" && deployment.resources.as_ref().is_some_and(Vec::is_empty) {
            println!("         (nothing tagged with its name is left in the cloud)");
        }
    }
    Ok(())
}

/// Fills in `resources` for the clouds asked about, and for local VMs.
async fn ask_clouds(args: &ListArgs, listed: &mut [Listed]) -> Result<()> {
    for deployment in listed.iter_mut() {
        let name = deployment.name.as_str();
        let found = match deployment.cloud.as_str() {
            "aws" if args.aws => records(&Aws::existing(name, &args.region).await?).await?,
            "gcp" if args.gcp => {
                let project = args.project_id.as_deref().unwrap_or_default();
                records(&GcpDeploy::existing(name, project, &args.zone, None).await?).await?
            }
            "azure" if args.azure => {
                let azure = AzureDeploy::existing(
                    name,
                    args.resource_group.as_deref(),
                    args.subscription.as_deref(),
                )
                .await?;
                records(&azure).await?
            }
            "local" => match Local::existing(name) {
                Ok(local) => records(&local).await?,
                Err(_) => continue,
            },
            _ => continue,
        };
        deployment.resources = Some(found);
    }
    Ok(())
}

async fn records<C: Cloud>(cloud: &C) -> Result<Vec<Resource>> {
    Ok(cloud
        .find_tagged()
        .await?
        .iter()
        .map(CloudResource::record)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_lists_each_deployment() {
        let base = tempfile::tempdir().unwrap();
        let aws = base.path().join("cvm-cli/aws/demo");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(aws.join("api-token"), "x").unwrap();
        std::fs::create_dir_all(base.path().join("cvm-cli/local/cvm-local")).unwrap();
        std::fs::create_dir_all(base.path().join("cvm-cli/other/ignored")).unwrap();
        let listed = known(base.path()).unwrap();
        let names: Vec<(&str, &str)> = listed
            .iter()
            .map(|l| (l.cloud.as_str(), l.name.as_str()))
            .collect();
        assert_eq!(names, [("aws", "demo"), ("local", "cvm-local")]);
        assert_eq!(listed[0].api_token_file, Some(aws.join("api-token")));
        assert_eq!(listed[1].api_token_file, None);
        assert!(known(&base.path().join("missing")).unwrap().is_empty());
    }
}

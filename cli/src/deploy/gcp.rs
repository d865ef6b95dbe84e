//! `cvm-cli deploy-gcp`: the disk as `disk.tar.gz` (a sparse `disk.raw` member) into the user's
//! bucket by a resumable upload, then an image (UEFI, gVNIC, SEV-SNP and TDX capable), a firewall
//! rule for the agent's and the extra ports, and a confidential instance: TDX on c3, SEV-SNP on
//! n2d (AMD Milan), maintenance TERMINATE, vTPM on, Secure Boot off unless `--secure-boot` (the
//! default image is unsigned). The agent's new API token travels in the instance metadata
//! attribute `cvm-agent` (`cvm_attestation::provision::GCP_METADATA_KEY`) as the
//! `cvm_attestation::provision::UserData` document.
//!
//! Images and instances carry the label `cvm-cli-deployment=<name>`; firewalls have no labels, so
//! the rule is named `<name>-cvm-cli` and its description says `cvm-cli-deployment=<name>`. The
//! uploaded object is ours and is deleted with the deployment; the bucket never is.

use super::blocks::UploadStats;
use super::gce::{self, Compute, Endpoints, Firewall, Gcp, Image, Instance};
use super::gcs;
use super::plan::{
    delete_found, report_kept, update_command, verify_command, Deployed, Plan, Resource, TokenPlan,
};
use super::token::{self, DeployToken};
use super::{check_deployment_name, step, DeployOptions, SecureBootOption, DEPLOYMENT_TAG};
use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::provision::GCP_METADATA_KEY;
use serde::Deserialize;
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials: GOOGLE_OAUTH_ACCESS_TOKEN, else Application Default \
    Credentials of `gcloud auth application-default login`, else `gcloud auth \
    print-access-token`. STORAGE_EMULATOR_HOST and CVM_GCP_COMPUTE_ENDPOINT point it at \
    emulators.\n\nExample:\n  cvm-cli deploy-gcp --project_id my-project --bucket my-bucket \
    --vm_name demo --additional_ports 443 --allow-from 203.0.113.7/32\n  cvm-cli cleanup --gcp demo --project-id my-project \
    --region asia-southeast1-b"
)]
pub struct DeployGcpArgs {
    /// Name of the deployment: the instance's name and the prefix of every resource
    /// (lowercase letters, digits, '-').
    #[arg(long, visible_alias = "vm_name", default_value = "cvm-test")]
    pub vm_name: String,
    /// The Google Cloud project.
    #[arg(long, visible_alias = "project_id")]
    pub project_id: String,
    /// Your Cloud Storage bucket for the disk upload (the object is removed with the deployment,
    /// the bucket never).
    #[arg(long)]
    pub bucket: String,
    /// The zone, e.g. asia-southeast1-b.
    #[arg(long, visible_alias = "zone", default_value = "asia-southeast1-b")]
    pub region: String,
    /// Machine type: c3-* (Intel TDX) or n2d-* (AMD SEV-SNP).
    #[arg(long, visible_alias = "vm_type", default_value = "c3-standard-4")]
    pub vm_type: String,
    #[command(flatten)]
    pub secure_boot: SecureBootOption,
    #[command(flatten)]
    pub options: DeployOptions,
}

/// The confidential computing technology of a machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tee {
    /// `confidentialInstanceConfig.confidentialInstanceType`.
    pub api: &'static str,
    pub name: &'static str,
    pub min_cpu_platform: Option<&'static str>,
}

/// TDX for c3-*, SEV-SNP (on AMD Milan) for n2d-*; anything else is refused.
pub fn confidential_type(vm_type: &str) -> Result<Tee> {
    let family_and_size = |prefix: &str| {
        vm_type
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && is_gcp_word(rest))
    };
    if family_and_size("c3-") {
        return Ok(Tee {
            api: "TDX",
            name: "Intel TDX",
            min_cpu_platform: None,
        });
    }
    if family_and_size("n2d-") {
        return Ok(Tee {
            api: "SEV_SNP",
            name: "AMD SEV-SNP",
            min_cpu_platform: Some("AMD Milan"),
        });
    }
    bail!(
        "machine type {vm_type:?} offers no confidential VM this tool deploys: use a c3-* type \
         for Intel TDX (e.g. c3-standard-4) or an n2d-* type for AMD SEV-SNP (e.g. \
         n2d-standard-2)"
    )
}

fn is_gcp_word(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Resource names on GCP: lowercase letters, digits and '-', starting with a letter.
fn check_gcp_name(name: &str) -> Result<()> {
    check_deployment_name(name)?;
    if !is_gcp_word(name) || name.ends_with('-') {
        bail!(
            "VM name {name:?}: Google Cloud names use lowercase letters, digits and '-' (no '_', \
             no uppercase, not ending in '-'), e.g. cvm-test"
        );
    }
    Ok(())
}

fn check_inputs(args: &DeployGcpArgs) -> Result<Tee> {
    check_gcp_name(&args.vm_name)?;
    check_project_and_zone(&args.project_id, &args.region)?;
    let bucket = &args.bucket;
    let bucket_ok = (3..=222).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !bucket_ok {
        bail!("bucket {bucket:?} is not a Cloud Storage bucket name (give its name, not a URL)");
    }
    confidential_type(&args.vm_type)
}

fn check_project_and_zone(project: &str, zone: &str) -> Result<()> {
    let project_ok = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && is_gcp_word(project);
    if !project_ok {
        bail!("project ID {project:?}: 6 to 30 lowercase letters, digits or '-'");
    }
    let zone_ok = is_gcp_word(zone) && zone.matches('-').count() == 2 && !zone.ends_with('-');
    if !zone_ok {
        bail!("--region {zone:?} is not a zone: give one like asia-southeast1-b");
    }
    Ok(())
}

pub fn run(args: DeployGcpArgs) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(deploy(args))
}

/// The token to send: `GOOGLE_OAUTH_ACCESS_TOKEN`, Application Default Credentials of a user
/// login, or `gcloud auth print-access-token`; none against emulators without a token set.
async fn access_token(emulated: bool, http: &reqwest::Client) -> Result<Option<String>> {
    if let Ok(token) = std::env::var("GOOGLE_OAUTH_ACCESS_TOKEN") {
        if !token.trim().is_empty() {
            return Ok(Some(token.trim().to_owned()));
        }
    }
    if emulated {
        return Ok(None);
    }
    match adc_user_token(http).await {
        Ok(Some(token)) => return Ok(Some(token)),
        Ok(None) => {}
        Err(error) => step(format!("Application Default Credentials: {error:#}")),
    }
    let gcloud = tokio::process::Command::new("gcloud")
        .args(["auth", "print-access-token"])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    if let Ok(output) = gcloud {
        let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() && !token.is_empty() && !token.contains(char::is_whitespace) {
            return Ok(Some(token));
        }
    }
    bail!(
        "no Google Cloud credentials: run `gcloud auth login` (or `gcloud auth \
         application-default login`), or set GOOGLE_OAUTH_ACCESS_TOKEN to an access token"
    )
}

/// Application Default Credentials of type `authorized_user` (what `gcloud auth
/// application-default login` writes): a refresh token exchanged for an access token.
async fn adc_user_token(http: &reqwest::Client) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct Adc {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        client_id: String,
        #[serde(default)]
        client_secret: String,
        #[serde(default)]
        refresh_token: String,
    }
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
    }
    let path = match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        Some(path) => PathBuf::from(path),
        None => match std::env::var_os("HOME") {
            Some(home) => {
                PathBuf::from(home).join(".config/gcloud/application_default_credentials.json")
            }
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    let adc: Adc = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a credentials file", path.display()))?;
    if adc.kind != "authorized_user" {
        step(format!(
            "{} holds {:?} credentials, which this tool does not sign; trying gcloud",
            path.display(),
            adc.kind
        ));
        return Ok(None);
    }
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", &adc.client_id),
        ("client_secret", &adc.client_secret),
        ("refresh_token", &adc.refresh_token),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", gcs::percent_encode(value)))
    .collect::<Vec<_>>()
    .join("&");
    let response = http
        .post("https://oauth2.googleapis.com/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .timeout(Duration::from_secs(60))
        .body(form)
        .send()
        .await
        .context("refreshing the access token")?;
    let token: Token = gce::json(response, "refreshing the access token").await?;
    Ok(Some(token.access_token))
}

fn firewall_name(name: &str) -> String {
    format!("{name}-cvm-cli")
}

/// A GCP firewall rule takes one address family: the IPv6 ranges get a rule of their own.
fn firewall_name_v6(name: &str) -> String {
    format!("{name}-cvm-cli-v6")
}

async fn deploy(args: DeployGcpArgs) -> Result<()> {
    let tee = check_inputs(&args)?;
    let ingress = args.options.ingress()?;
    let image = args.options.image()?;
    let image_bytes = std::fs::metadata(&image)?.len();
    let name = &args.vm_name;
    let firewall_step = ingress
        .by_family()
        .into_iter()
        .filter(|(_, ranges)| !ranges.is_empty())
        .map(|(ipv6, ranges)| {
            format!(
                "firewall rule {}: inbound TCP {} from {} to the instance",
                if ipv6 {
                    firewall_name_v6(name)
                } else {
                    firewall_name(name)
                },
                ingress.port_list(),
                ranges.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let plan = Plan {
        cloud: "gcp",
        deployment: name.clone(),
        region: args.region.clone(),
        vm_type: args.vm_type.clone(),
        tee: tee.name,
        image: image.clone(),
        image_bytes,
        ports: ingress.ports.clone(),
        allow_from: ingress.all(),
        warnings: ingress.warnings(true),
        api_token: TokenPlan {
            file: token::token_path("gcp", name)?,
            passed_via: format!(
                "the instance metadata attribute {GCP_METADATA_KEY:?} (metadata.items[])"
            ),
        },
        secure_boot: args.secure_boot.plan(),
        steps: vec![
            format!(
                "upload disk.tar.gz to gs://{}/{name}-<sha256>.tar.gz (resumable, {} MiB chunks)",
                args.bucket,
                gcs::chunk_bytes() >> 20
            ),
            format!(
                "image {name}-<sha256> in project {} (UEFI_COMPATIBLE, GVNIC, SEV_SNP_CAPABLE, \
                 TDX_CAPABLE)",
                args.project_id
            ),
            firewall_step,
            format!(
                "instance {name} ({}, {}{}, maintenance TERMINATE, vTPM, Secure Boot {}, the API \
                 token in metadata {GCP_METADATA_KEY}), wait for its external IP",
                args.vm_type,
                tee.api,
                tee.min_cpu_platform
                    .map(|cpu| format!(" on {cpu}"))
                    .unwrap_or_default(),
                if args.secure_boot.secure_boot {
                    "on"
                } else {
                    "off"
                }
            ),
        ],
    };
    plan.print(args.options.json);
    if args.options.dry_run {
        return Ok(());
    }

    let endpoints = Endpoints::from_env();
    let probe = reqwest::Client::new();
    let token = access_token(endpoints.emulated, &probe).await?;
    let gcp = Gcp::new(endpoints, token)?;
    let compute = Compute {
        gcp: &gcp,
        project: args.project_id.clone(),
        zone: args.region.clone(),
    };
    let cleanup = cleanup_command(name, &args.project_id, &args.region, &args.bucket);
    let mut token = DeployToken::create("gcp", name, &cleanup)?;
    let user_data = token.user_data()?;
    let mut created = Vec::new();
    match create_everything(&args, tee, &image, &compute, &user_data, &mut created).await {
        Ok((address, upload)) => {
            token.keep();
            Deployed {
                cloud: "gcp",
                deployment: name.clone(),
                region: args.region.clone(),
                vm_type: args.vm_type.clone(),
                verify_command: verify_command(&address),
                update_command: update_command(&address, &token.path),
                api_token_file: token.path.clone(),
                cleanup_command: cleanup,
                address,
                resources: created,
                upload,
            }
            .finish(&args.options)
        }
        Err(error) => {
            if created.is_empty() {
                token.after_failure(false);
                return Err(error);
            }
            eprintln!("error: {error:#}");
            if args.options.keep_on_failure {
                report_kept(&created, &cleanup);
                token.after_failure(created.iter().any(|r| r.kind == "instance"));
            } else {
                eprintln!("deploy failed; deleting what it created:");
                let wait = Duration::from_secs(args.options.wait_seconds);
                let failed = delete_all(&compute, &created, wait).await;
                if failed > 0 {
                    eprintln!("{failed} resource(s) are left; retry with: {cleanup}");
                }
                token.after_failure(false);
            }
            Err(error)
        }
    }
}

fn cleanup_command(name: &str, project: &str, zone: &str, bucket: &str) -> String {
    format!("cvm-cli cleanup --gcp {name} --project-id {project} --region {zone} --bucket {bucket}")
}

/// The deploy's steps; each created resource is recorded in `created` as soon as it exists.
async fn create_everything(
    args: &DeployGcpArgs,
    tee: Tee,
    image: &Path,
    compute: &Compute<'_>,
    user_data: &str,
    created: &mut Vec<Resource>,
) -> Result<(String, UploadStats)> {
    let gcp = compute.gcp;
    let name = &args.vm_name;
    let bucket = &args.bucket;
    let zone = &args.region;
    let wait = Duration::from_secs(args.options.wait_seconds);
    let labels = json!({ DEPLOYMENT_TAG: name });

    // Named by the disk's content: a deploy of the same disk again (after a failure kept with
    // --keep-on-failure, or for a second VM) finds the finished upload and skips packing too.
    let image_path = image.to_owned();
    let digest = tokio::task::spawn_blocking(move || gcs::sha256_file(&image_path)).await??;
    let short = &digest[..12];
    let object = format!("{name}-{short}.tar.gz");

    let upload = match gcs::object_exists(gcp, bucket, &object).await? {
        Some(existing)
            if existing.metadata.get(DEPLOYMENT_TAG) == Some(name)
                && existing.metadata.get(gcs::DISK_SHA_KEY) == Some(&digest) =>
        {
            step(format!(
                "gs://{bucket}/{object} is already there (same disk): not uploading again"
            ));
            UploadStats::default()
        }
        _ => {
            let image_path = image.to_owned();
            let source =
                tokio::task::spawn_blocking(move || gcs::tarball_source(&image_path)).await??;
            step(format!("uploading disk.tar.gz to gs://{bucket}/{object}"));
            created.push(Resource {
                kind: "object",
                id: format!("gs://{bucket}/{object}"),
            });
            let progress = !args.options.json && std::io::stderr().is_terminal();
            let stats =
                gcs::upload_object(gcp, bucket, &object, name, &digest, source, progress).await?;
            step(format!(
                "uploaded {} MiB in {:.1} s",
                stats.bytes_uploaded >> 20,
                stats.seconds
            ));
            stats
        }
    };

    let image_name = format!("{name}-{short}");
    step(format!("creating image {image_name}"));
    let body = json!({
        "name": image_name,
        "description": format!("{DEPLOYMENT_TAG}={name}: disk from gs://{bucket}/{object}"),
        "rawDisk": { "source": gcs::public_object_url(bucket, &object) },
        "guestOsFeatures": [
            { "type": "UEFI_COMPATIBLE" },
            { "type": "GVNIC" },
            { "type": "SEV_SNP_CAPABLE" },
            { "type": "TDX_CAPABLE" },
        ],
        "architecture": "X86_64",
        "labels": labels,
    });
    let what = format!("creating image {image_name}");
    match compute.start_insert("global/images", &body, &what).await? {
        Some(operation) => {
            created.push(Resource {
                kind: "image",
                id: image_name.clone(),
            });
            compute.wait(operation, &what, wait).await?;
        }
        None => {
            let existing: Image = compute
                .get(&format!("global/images/{image_name}"), "reading the image")
                .await?
                .with_context(|| format!("image {image_name} exists and vanished"))?;
            if existing.labels.get(DEPLOYMENT_TAG) != Some(name) {
                bail!("image {image_name} exists and was not made by cvm-cli for {name}");
            }
            step(format!(
                "image {image_name} exists already (this deployment's, same disk): reusing it"
            ));
        }
    }

    let ingress = args.options.ingress()?;
    let ports: Vec<String> = ingress.ports.iter().map(u16::to_string).collect();
    for (ipv6, ranges) in ingress.by_family() {
        if ranges.is_empty() {
            continue;
        }
        let firewall = if ipv6 {
            firewall_name_v6(name)
        } else {
            firewall_name(name)
        };
        step(format!("creating firewall rule {firewall}"));
        let body = json!({
            "name": firewall,
            "description": format!("{DEPLOYMENT_TAG}={name}: agent and workload ports"),
            "network": "global/networks/default",
            "direction": "INGRESS",
            "priority": 1000,
            "allowed": [{
                "IPProtocol": "tcp",
                "ports": ports,
            }],
            "sourceRanges": ranges,
            "targetTags": [name],
        });
        let what = format!("creating firewall rule {firewall}");
        match compute
            .start_insert("global/firewalls", &body, &what)
            .await?
        {
            Some(operation) => {
                created.push(Resource {
                    kind: "firewall",
                    id: firewall.clone(),
                });
                compute.wait(operation, &what, wait).await?;
            }
            None => {
                let existing: Firewall = compute
                    .get(
                        &format!("global/firewalls/{firewall}"),
                        "reading the firewall rule",
                    )
                    .await?
                    .with_context(|| format!("firewall rule {firewall} exists and vanished"))?;
                let ours = existing
                    .description
                    .as_deref()
                    .is_some_and(|text| text.starts_with(&format!("{DEPLOYMENT_TAG}={name}:")));
                let mut have: Vec<&String> = existing
                    .allowed
                    .iter()
                    .filter(|rule| rule.ip_protocol == "tcp")
                    .flat_map(|rule| &rule.ports)
                    .collect();
                let mut want: Vec<&String> = ports.iter().collect();
                have.sort();
                want.sort();
                let mut have_ranges = existing.source_ranges.clone();
                let mut want_ranges = ranges.clone();
                have_ranges.sort();
                want_ranges.sort();
                if !ours || have != want || have_ranges != want_ranges {
                    bail!(
                        "firewall rule {firewall} exists {}: remove it first ({})",
                        if ours {
                            "with other ports or source ranges"
                        } else {
                            "and was not made by cvm-cli for this deployment"
                        },
                        cleanup_command(name, &args.project_id, zone, bucket)
                    );
                }
                step(format!(
                    "firewall rule {firewall} exists already (this deployment's, same ports and \
                     ranges): reusing it"
                ));
            }
        }
    }

    step(format!(
        "creating instance {name} ({}, {})",
        args.vm_type, tee.name
    ));
    let mut body = json!({
        "name": name,
        "machineType": format!("zones/{zone}/machineTypes/{}", args.vm_type),
        "confidentialInstanceConfig": { "confidentialInstanceType": tee.api },
        "scheduling": {
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": true,
        },
        "shieldedInstanceConfig": {
            "enableVtpm": true,
            "enableSecureBoot": args.secure_boot.secure_boot,
            "enableIntegrityMonitoring": true,
        },
        "metadata": {
            "items": [{ "key": GCP_METADATA_KEY, "value": user_data }],
        },
        "disks": [{
            "boot": true,
            "autoDelete": true,
            "type": "PERSISTENT",
            "initializeParams": {
                "sourceImage": format!("projects/{}/global/images/{image_name}", args.project_id),
                "labels": labels,
            },
        }],
        "networkInterfaces": [{
            "network": "global/networks/default",
            "nicType": "GVNIC",
            "accessConfigs": [{ "type": "ONE_TO_ONE_NAT", "name": "External NAT" }],
        }],
        "tags": { "items": [name] },
        "labels": labels,
    });
    if let (Some(cpu), Some(object)) = (tee.min_cpu_platform, body.as_object_mut()) {
        object.insert("minCpuPlatform".into(), json!(cpu));
    }
    let what = format!("creating instance {name}");
    let Some(operation) = compute
        .start_insert(&compute.zonal("instances"), &body, &what)
        .await?
    else {
        bail!(
            "instance {name} exists already in {zone}: pick another --vm-name or remove it ({})",
            cleanup_command(name, &args.project_id, zone, bucket)
        );
    };
    created.push(Resource {
        kind: "instance",
        id: name.clone(),
    });
    if let Err(error) = compute.wait(operation, &what, wait).await {
        // A failed insert usually leaves no instance: then none is reported, kept or deleted.
        let path = compute.zonal(&format!("instances/{name}"));
        if let Ok(None) = compute.get::<Instance>(&path, "reading the instance").await {
            created.pop();
        }
        return Err(error);
    }

    step(format!("waiting for {name} to run with an external IP"));
    let deadline = Instant::now() + wait;
    loop {
        let instance: Instance = compute
            .get(
                &compute.zonal(&format!("instances/{name}")),
                "reading the instance",
            )
            .await?
            .with_context(|| format!("instance {name} vanished"))?;
        if matches!(
            instance.status.as_str(),
            "TERMINATED" | "STOPPING" | "STOPPED" | "SUSPENDED"
        ) {
            bail!(
                "instance {name} is {}: {}",
                instance.status,
                instance.status_message.unwrap_or_default()
            );
        }
        if let (Some(ip), "RUNNING") = (instance.nat_ip(), instance.status.as_str()) {
            return Ok((ip, upload));
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for {name} to run with an external IP",
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes resources newest first, reporting each; returns how many could not be deleted.
async fn delete_all(compute: &Compute<'_>, resources: &[Resource], wait: Duration) -> usize {
    let mut failed = 0;
    for resource in resources.iter().rev() {
        match delete(compute, resource, wait).await {
            Ok(true) => eprintln!("  deleted {} {}", resource.kind, resource.id),
            Ok(false) => eprintln!("  {} {} did not exist", resource.kind, resource.id),
            Err(error) => {
                failed += 1;
                eprintln!(
                    "  could not delete {} {}: {error:#} (delete it yourself)",
                    resource.kind, resource.id
                )
            }
        }
    }
    failed
}

async fn delete(compute: &Compute<'_>, resource: &Resource, wait: Duration) -> Result<bool> {
    let id = &resource.id;
    match resource.kind {
        "instance" => {
            compute
                .delete(
                    &compute.zonal(&format!("instances/{id}")),
                    &format!("deleting instance {id}"),
                    wait,
                )
                .await
        }
        "firewall" => {
            compute
                .delete(
                    &format!("global/firewalls/{id}"),
                    &format!("deleting firewall rule {id}"),
                    wait,
                )
                .await
        }
        "image" => {
            compute
                .delete(
                    &format!("global/images/{id}"),
                    &format!("deleting image {id}"),
                    wait,
                )
                .await
        }
        "object" => {
            let (bucket, object) = id
                .strip_prefix("gs://")
                .and_then(|rest| rest.split_once('/'))
                .context("not a gs:// URL")?;
            gcs::delete_object(compute.gcp, bucket, object).await
        }
        other => bail!("unknown resource kind {other}"),
    }
}

/// `cvm-cli cleanup --gcp NAME`: deletes the instances and images labelled with the name, the
/// firewall rule named for it (when its description carries the tag), and the uploaded objects
/// (found through the images' sources, or in `bucket`: `NAME-*.tar.gz` carrying the tag).
pub fn cleanup(
    name: &str,
    project: &str,
    zone: &str,
    bucket: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    check_gcp_name(name)?;
    check_project_and_zone(project, zone)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let endpoints = Endpoints::from_env();
        let token = access_token(endpoints.emulated, &reqwest::Client::new()).await?;
        let gcp = Gcp::new(endpoints, token)?;
        let compute = Compute {
            gcp: &gcp,
            project: project.to_owned(),
            zone: zone.to_owned(),
        };
        let resources = labelled_resources(&compute, name, bucket).await?;
        let what = format!("labelled {DEPLOYMENT_TAG}={name} in {project} {zone}");
        let compute = &compute;
        delete_found(&resources, &what, dry_run, |resource| async move {
            delete(compute, &resource, Duration::from_secs(600))
                .await
                .map(drop)
        })
        .await?;
        token::forget("gcp", name, !resources.is_empty(), dry_run)
    })
}

/// The deployment's resources in creation order: objects, images, firewall, instances.
async fn labelled_resources(
    compute: &Compute<'_>,
    name: &str,
    bucket: Option<&str>,
) -> Result<Vec<Resource>> {
    let gcp = compute.gcp;
    let images: Vec<Image> = compute
        .list_labelled("global/images", DEPLOYMENT_TAG, name)
        .await?;
    let images: Vec<Image> = images
        .into_iter()
        .filter(|image| image.labels.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name))
        .collect();
    let mut objects = Vec::new();
    for image in &images {
        let source = image
            .raw_disk
            .as_ref()
            .and_then(|raw| raw.source.as_deref());
        let Some(rest) = source.and_then(|s| s.strip_prefix("https://storage.googleapis.com/"))
        else {
            continue;
        };
        if let Some((bucket, object)) = rest.split_once('/') {
            objects.push((bucket.to_owned(), object.to_owned()));
        }
    }
    if let Some(bucket) = bucket {
        for object in list_objects(gcp, bucket, &format!("{name}-")).await? {
            objects.push((bucket.to_owned(), object));
        }
    }
    objects.sort();
    objects.dedup();
    let mut resources = Vec::new();
    for (bucket, object) in objects {
        // Ours only: named for the deployment and carrying its tag.
        let ours = object.starts_with(&format!("{name}-"))
            && object.ends_with(".tar.gz")
            && gce::check_path_segment(&bucket, "bucket").is_ok()
            && matches!(
                gcs::object_exists(gcp, &bucket, &object).await?,
                Some(found) if found.metadata.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name)
            );
        if ours {
            resources.push(Resource {
                kind: "object",
                id: format!("gs://{bucket}/{object}"),
            });
        }
    }
    for image in images {
        gce::check_path_segment(&image.name, "image name")?;
        resources.push(Resource {
            kind: "image",
            id: image.name,
        });
    }
    for firewall in [firewall_name(name), firewall_name_v6(name)] {
        let rule: Option<Firewall> = compute
            .get(
                &format!("global/firewalls/{firewall}"),
                "reading the firewall rule",
            )
            .await?;
        if let Some(rule) = rule {
            let tagged = rule
                .description
                .as_deref()
                .is_some_and(|text| text.starts_with(&format!("{DEPLOYMENT_TAG}={name}:")));
            if tagged && rule.name == firewall {
                resources.push(Resource {
                    kind: "firewall",
                    id: rule.name,
                });
            } else {
                step(format!(
                    "firewall rule {firewall} exists but was not made by cvm-cli for {name}: kept"
                ));
            }
        }
    }
    let instances: Vec<Instance> = compute
        .list_labelled(&compute.zonal("instances"), DEPLOYMENT_TAG, name)
        .await?;
    for instance in instances {
        if instance.labels.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name) {
            gce::check_path_segment(&instance.name, "instance name")?;
            resources.push(Resource {
                kind: "instance",
                id: instance.name,
            });
        }
    }
    Ok(resources)
}

/// Object names in `bucket` starting with `prefix`.
async fn list_objects(gcp: &Gcp, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Objects {
        #[serde(default)]
        items: Vec<gcs::StorageObject>,
    }
    let url = reqwest::Url::parse_with_params(
        &format!("{}/storage/v1/b/{bucket}/o", gcp.storage),
        &[("prefix", prefix)],
    )?;
    let response = gcp
        .request(reqwest::Method::GET, url.as_str())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("listing the bucket")?;
    let objects: Objects = gce::json(response, &format!("listing gs://{bucket}")).await?;
    Ok(objects
        .items
        .into_iter()
        .map(|object| object.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_families_pick_the_tee() {
        assert_eq!(confidential_type("c3-standard-4").unwrap().api, "TDX");
        let snp = confidential_type("n2d-standard-2").unwrap();
        assert_eq!(snp.api, "SEV_SNP");
        assert_eq!(snp.min_cpu_platform, Some("AMD Milan"));
        for bad in [
            "e2-standard-4",
            "c3-",
            "n2-standard-2",
            "C3-standard-4",
            "c3d-standard-4",
        ] {
            let text = confidential_type(bad).unwrap_err().to_string();
            assert!(text.contains("c3-*") && text.contains("n2d-*"), "{text}");
        }
    }

    #[test]
    fn names_zones_and_buckets_are_checked() {
        assert!(check_gcp_name("cvm-test").is_ok());
        assert!(check_gcp_name("cvm_test").is_err());
        assert!(check_gcp_name("Cvm").is_err());
        assert!(check_project_and_zone("my-project", "asia-southeast1-b").is_ok());
        assert!(check_project_and_zone("my-project", "asia-southeast1").is_err());
        assert!(check_project_and_zone("my/project", "asia-southeast1-b").is_err());
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(gcs::percent_encode("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(gcs::percent_encode("1//x+y"), "1%2F%2Fx%2By");
    }
}

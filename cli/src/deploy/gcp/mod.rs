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
//! uploaded object is ours and is deleted with the deployment; the bucket never is. The runner
//! (`runner.rs`) drives the steps.

pub mod gce;
pub mod gcs;
pub mod quota;

use super::blocks::UploadStats;
use super::plan::{Plan, TokenPlan};
use super::runner::{self, Cloud, CloudResource, Created, StepContext};
use super::{check_deployment_name, step, token, DeployOptions, SecureBootOption, DEPLOYMENT_TAG};
use crate::cleanup::Report;
use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::evidence::{Cloud as CloudKind, Tee};
use cvm_attestation::provision::GCP_METADATA_KEY;
use gce::{Compute, Endpoints, Firewall, Gcp, Image, Instance, MachineType};
use serde::Deserialize;
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials: GOOGLE_OAUTH_ACCESS_TOKEN, else Application Default \
    Credentials of `gcloud auth application-default login`, else `gcloud auth \
    print-access-token`. STORAGE_EMULATOR_HOST and CVM_GCP_COMPUTE_ENDPOINT point it at \
    emulators.\n\nExample:\n  cvm-cli deploy-gcp --project-id my-project --bucket my-bucket \
    --name demo --additional-ports 443 --allow-from 203.0.113.7/32\n  cvm-cli cleanup --gcp demo --project-id my-project \
    --zone asia-southeast1-b"
)]
pub struct DeployGcpArgs {
    /// Name of the deployment: the instance's name and the prefix of every resource
    /// (lowercase letters, digits, '-').
    #[arg(long, alias = "vm-name", alias = "vm_name", default_value = "cvm-test")]
    pub name: String,
    /// The Google Cloud project.
    #[arg(long, alias = "project_id")]
    pub project_id: String,
    /// Your Cloud Storage bucket for the disk upload (the object is removed with the deployment,
    /// the bucket never).
    #[arg(long)]
    pub bucket: String,
    /// The zone, e.g. asia-southeast1-b (`--region` is accepted: the predecessor put the zone
    /// there).
    #[arg(long, alias = "region", default_value = "asia-southeast1-b")]
    pub zone: String,
    /// Machine type: c3-* (Intel TDX) or n2d-* (AMD SEV-SNP).
    #[arg(long, alias = "vm_type", default_value = "c3-standard-4")]
    pub vm_type: String,
    #[command(flatten)]
    pub secure_boot: SecureBootOption,
    #[command(flatten)]
    pub options: DeployOptions,
}

/// What a GCP deploy creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcpResource {
    /// The uploaded disk (`bucket`, `object`); never the bucket.
    Object(String, String),
    Image(String),
    Firewall(String),
    Instance(String),
}

impl CloudResource for GcpResource {
    fn kind(&self) -> &'static str {
        match self {
            Self::Object(..) => "object",
            Self::Image(_) => "image",
            Self::Firewall(_) => "firewall",
            Self::Instance(_) => "instance",
        }
    }

    fn id(&self) -> String {
        match self {
            Self::Object(bucket, object) => format!("gs://{bucket}/{object}"),
            Self::Image(name) | Self::Firewall(name) | Self::Instance(name) => name.clone(),
        }
    }

    fn is_vm(&self) -> bool {
        matches!(self, Self::Instance(_))
    }
}

/// The steps of a GCP deploy.
#[derive(Debug, Clone, Copy)]
pub enum GcpStep {
    Upload,
    Image,
    Firewall,
    Instance,
}

/// One GCP deployment: its settings, and what the steps made so far.
pub struct GcpDeploy {
    name: String,
    project: String,
    /// The bucket of the upload (`cleanup` may not know it).
    bucket: Option<String>,
    zone: String,
    vm_type: String,
    secure_boot: bool,
    options: DeployOptions,
    client: Option<Gcp>,
    /// The uploaded object and the image made from it.
    object: Option<String>,
    image_name: Option<String>,
    address: Option<String>,
    upload: UploadStats,
}

fn firewall_name(name: &str) -> String {
    format!("{name}-cvm-cli")
}

/// A GCP firewall rule takes one address family: the IPv6 ranges get a rule of their own.
fn firewall_name_v6(name: &str) -> String {
    format!("{name}-cvm-cli-v6")
}

/// Whether a firewall rule's description says it is this deployment's.
fn is_ours(rule: &Firewall, name: &str) -> bool {
    rule.description
        .as_deref()
        .is_some_and(|text| text.starts_with(&format!("{DEPLOYMENT_TAG}={name}:")))
}

impl GcpDeploy {
    pub fn new(args: DeployGcpArgs) -> Self {
        Self {
            name: args.name,
            project: args.project_id,
            bucket: Some(args.bucket),
            zone: args.zone,
            vm_type: args.vm_type,
            secure_boot: args.secure_boot.secure_boot,
            options: args.options,
            client: None,
            object: None,
            image_name: None,
            address: None,
            upload: UploadStats::default(),
        }
    }

    /// For `cleanup` and `list`: a deployment known by name, project and zone.
    pub async fn existing(
        name: &str,
        project: &str,
        zone: &str,
        bucket: Option<&str>,
    ) -> Result<Self> {
        check_gcp_name(name)?;
        check_project_and_zone(project, zone)?;
        if let Some(bucket) = bucket {
            check_bucket(bucket)?;
        }
        let mut gcp = Self::new(DeployGcpArgs {
            name: name.to_owned(),
            project_id: project.to_owned(),
            bucket: String::new(),
            zone: zone.to_owned(),
            vm_type: String::new(),
            secure_boot: SecureBootOption { secure_boot: false },
            options: DeployOptions::default(),
        });
        gcp.bucket = bucket.map(str::to_owned);
        gcp.connect().await?;
        Ok(gcp)
    }

    async fn connect(&mut self) -> Result<()> {
        let endpoints = Endpoints::from_env();
        let token = access_token(endpoints.emulated, &reqwest::Client::new()).await?;
        self.client = Some(Gcp::new(endpoints, token)?);
        Ok(())
    }

    fn compute(&self) -> Result<Compute<'_>> {
        Ok(Compute {
            gcp: self
                .client
                .as_ref()
                .context("not connected to Google Cloud (preflight did not run)")?,
            project: self.project.clone(),
            zone: self.zone.clone(),
        })
    }

    fn bucket(&self) -> Result<&str> {
        self.bucket.as_deref().context("no --bucket")
    }

    fn wait(&self) -> Duration {
        Duration::from_secs(self.options.wait_seconds.max(1))
    }

    fn confidential(&self) -> Result<Confidential> {
        confidential_type(&self.vm_type)
    }

    /// The firewall rules to make: (name, IPv4 or IPv6 ranges), families without ranges left
    /// out.
    fn firewalls(&self) -> Result<Vec<(String, Vec<String>)>> {
        let ingress = self.options.ingress()?;
        Ok(ingress
            .by_family()
            .into_iter()
            .filter(|(_, ranges)| !ranges.is_empty())
            .map(|(ipv6, ranges)| {
                let rule = if ipv6 {
                    firewall_name_v6(&self.name)
                } else {
                    firewall_name(&self.name)
                };
                (rule, ranges)
            })
            .collect())
    }
}

/// The confidential computing technology of a machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confidential {
    pub tee: Tee,
    /// `confidentialInstanceConfig.confidentialInstanceType`.
    pub api: &'static str,
    pub min_cpu_platform: Option<&'static str>,
    /// The region's quota metric of the family (besides `CPUS`).
    pub quota_metric: &'static str,
}

/// TDX for c3-*, SEV-SNP (on AMD Milan) for n2d-*; anything else is refused.
pub fn confidential_type(vm_type: &str) -> Result<Confidential> {
    let family_and_size = |prefix: &str| {
        vm_type
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && is_gcp_word(rest))
    };
    if family_and_size("c3-") {
        return Ok(Confidential {
            tee: Tee::Tdx,
            api: "TDX",
            min_cpu_platform: None,
            quota_metric: "C3_CPUS",
        });
    }
    if family_and_size("n2d-") {
        return Ok(Confidential {
            tee: Tee::SevSnp,
            api: "SEV_SNP",
            min_cpu_platform: Some("AMD Milan"),
            quota_metric: "N2D_CPUS",
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

fn check_bucket(bucket: &str) -> Result<()> {
    let bucket_ok = (3..=222).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !bucket_ok {
        bail!("bucket {bucket:?} is not a Cloud Storage bucket name (give its name, not a URL)");
    }
    Ok(())
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
        bail!("--zone {zone:?} is not a zone: give one like asia-southeast1-b");
    }
    Ok(())
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

impl Cloud for GcpDeploy {
    type Resource = GcpResource;
    type Step = GcpStep;
    const KIND: CloudKind = CloudKind::Gcp;
    const PREFLIGHT: &'static str = "credentials, region, names already taken, vCPU quota";

    fn deployment(&self) -> &str {
        &self.name
    }

    fn options(&self) -> &DeployOptions {
        &self.options
    }

    fn secure_boot(&self) -> bool {
        self.secure_boot
    }

    fn validate(&self, _image: &Path) -> Result<()> {
        check_gcp_name(&self.name)?;
        check_project_and_zone(&self.project, &self.zone)?;
        check_bucket(self.bucket()?)?;
        self.confidential()?;
        self.options.ingress()?;
        Ok(())
    }

    fn plan(&self, image: &Path) -> Result<Plan> {
        let ingress = self.options.ingress()?;
        Ok(Plan {
            cloud: Self::KIND,
            deployment: self.name.clone(),
            region: self.zone.clone(),
            vm_type: self.vm_type.clone(),
            tee: self.confidential()?.tee,
            image: image.to_owned(),
            image_bytes: std::fs::metadata(image)?.len(),
            ports: ingress.ports.clone(),
            allow_from: ingress.all(),
            warnings: ingress.warnings(true),
            api_token: TokenPlan {
                file: token::token_path("gcp", &self.name)?,
                passed_via: format!(
                    "the instance metadata attribute {GCP_METADATA_KEY:?} (metadata.items[])"
                ),
            },
            secure_boot: SecureBootOption {
                secure_boot: self.secure_boot,
            }
            .plan(),
            steps: self.steps().into_iter().map(|s| self.describe(s)).collect(),
        })
    }

    /// Credentials and the bucket (one authenticated read of it), the machine type in the zone
    /// (Compute Engine answers 404 for a type the zone does not offer), clashes (an instance of
    /// the name, or a firewall rule of the name that is not this deployment's), and the vCPU
    /// quota of the region.
    async fn preflight(&mut self) -> Result<()> {
        self.connect().await?;
        let bucket = self.bucket()?.to_owned();
        let compute = self.compute()?;
        gcs::bucket_exists(compute.gcp, &bucket)
            .await
            .context("preflight: checking the credentials and the bucket")?;
        let machine_type = format!("machineTypes/{}", self.vm_type);
        let offered: Option<MachineType> = compute
            .get(
                &compute.zonal(&machine_type),
                "preflight: reading the machine type",
            )
            .await?;
        let Some(offered) = offered else {
            bail!(
                "machine type {} is not offered in zone {} (project {}): pick a zone that has \
                 it (`gcloud compute machine-types list --filter name={}`)",
                self.vm_type,
                self.zone,
                self.project,
                self.vm_type
            );
        };
        let instance: Option<Instance> = compute
            .get(
                &compute.zonal(&format!("instances/{}", self.name)),
                "preflight: reading the instance",
            )
            .await?;
        if instance.is_some() {
            bail!(
                "instance {} exists already in {}: pick another --name or remove it ({})",
                self.name,
                self.zone,
                self.cleanup_command()
            );
        }
        for (rule, _) in self.firewalls()? {
            let existing: Option<Firewall> = compute
                .get(
                    &format!("global/firewalls/{rule}"),
                    "preflight: reading the firewall rule",
                )
                .await?;
            if existing.is_some_and(|found| !is_ours(&found, &self.name)) {
                bail!(
                    "firewall rule {rule} exists and was not made by cvm-cli for {}: pick \
                     another --name or remove it",
                    self.name
                );
            }
        }
        let metric = self.confidential()?.quota_metric;
        quota::check(&compute, &self.vm_type, metric, offered.guest_cpus).await
    }

    fn steps(&self) -> Vec<GcpStep> {
        vec![
            GcpStep::Upload,
            GcpStep::Image,
            GcpStep::Firewall,
            GcpStep::Instance,
        ]
    }

    fn describe(&self, step: GcpStep) -> String {
        let name = &self.name;
        match step {
            GcpStep::Upload => format!(
                "upload disk.tar.gz to gs://{}/{name}-<sha256>.tar.gz (resumable, {} MiB chunks)",
                self.bucket.as_deref().unwrap_or_default(),
                gcs::chunk_bytes() >> 20
            ),
            GcpStep::Image => format!(
                "image {name}-<sha256> in project {} (UEFI_COMPATIBLE, GVNIC, SEV_SNP_CAPABLE, \
                 TDX_CAPABLE)",
                self.project
            ),
            GcpStep::Firewall => {
                let ports = self
                    .options
                    .ingress()
                    .map(|i| i.port_list())
                    .unwrap_or_default();
                self.firewalls()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(rule, ranges)| {
                        format!(
                            "firewall rule {rule}: inbound TCP {ports} from {} to the instance",
                            ranges.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            GcpStep::Instance => {
                let (api, cpu) = self
                    .confidential()
                    .map(|c| (c.api, c.min_cpu_platform))
                    .unwrap_or_default();
                format!(
                    "instance {name} ({}, {api}{}, maintenance TERMINATE, vTPM, Secure Boot {}, \
                     the API token in metadata {GCP_METADATA_KEY}), wait for its external IP",
                    self.vm_type,
                    cpu.map(|cpu| format!(" on {cpu}")).unwrap_or_default(),
                    if self.secure_boot { "on" } else { "off" }
                )
            }
        }
    }

    async fn create(
        &mut self,
        step: GcpStep,
        context: &StepContext,
        created: &mut Created<GcpResource>,
    ) -> Result<()> {
        match step {
            GcpStep::Upload => self.upload_disk(&context.image, created).await,
            GcpStep::Image => self.create_image(created).await,
            GcpStep::Firewall => self.create_firewalls(created).await,
            GcpStep::Instance => self.create_instance(&context.user_data, created).await,
        }
    }

    fn outcome(&self) -> Result<(String, UploadStats)> {
        let address = self
            .address
            .clone()
            .context("the instance has no address")?;
        Ok((address, self.upload.clone()))
    }

    async fn delete(&self, resource: &GcpResource) -> Result<()> {
        let compute = self.compute()?;
        let wait = self.wait();
        let (path, what) = match resource {
            GcpResource::Object(bucket, object) => {
                return gcs::delete_object(compute.gcp, bucket, object)
                    .await
                    .map(drop)
            }
            GcpResource::Instance(id) => (compute.zonal(&format!("instances/{id}")), "instance"),
            GcpResource::Firewall(id) => (format!("global/firewalls/{id}"), "firewall rule"),
            GcpResource::Image(id) => (format!("global/images/{id}"), "image"),
        };
        compute
            .delete(&path, &format!("deleting {what} {}", resource.id()), wait)
            .await
            .map(drop)
    }

    async fn find_tagged(&self) -> Result<Vec<GcpResource>> {
        labelled_resources(&self.compute()?, &self.name, self.bucket.as_deref()).await
    }

    fn cleanup_command(&self) -> String {
        let bucket = self
            .bucket
            .as_deref()
            .map(|bucket| format!(" --bucket {bucket}"))
            .unwrap_or_default();
        format!(
            "cvm-cli cleanup --gcp {} --project-id {} --zone {}{bucket}",
            self.name, self.project, self.zone
        )
    }

    fn region(&self) -> String {
        self.zone.clone()
    }

    fn vm_type(&self) -> String {
        self.vm_type.clone()
    }
}

impl GcpDeploy {
    /// The object is named by the disk's content: a deploy of the same disk again (after a
    /// failure kept with --keep-on-failure, or for a second VM) finds the finished upload and
    /// skips packing too.
    async fn upload_disk(
        &mut self,
        image: &Path,
        created: &mut Created<GcpResource>,
    ) -> Result<()> {
        let name = self.name.clone();
        let bucket = self.bucket()?.to_owned();
        let compute = self.compute()?;
        let gcp = compute.gcp;
        let image_path = image.to_owned();
        let digest = tokio::task::spawn_blocking(move || gcs::sha256_file(&image_path)).await??;
        let object = format!("{name}-{}.tar.gz", &digest[..12]);
        let upload = match gcs::object_exists(gcp, &bucket, &object).await? {
            Some(existing)
                if existing.metadata.get(DEPLOYMENT_TAG) == Some(&name)
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
                created.push(GcpResource::Object(bucket.clone(), object.clone()));
                let progress = !self.options.json() && std::io::stderr().is_terminal();
                let stats =
                    gcs::upload_object(gcp, &bucket, &object, &name, &digest, source, progress)
                        .await?;
                step(format!(
                    "uploaded {} MiB in {:.1} s",
                    stats.bytes_uploaded >> 20,
                    stats.seconds
                ));
                stats
            }
        };
        self.image_name = Some(format!("{name}-{}", &digest[..12]));
        self.object = Some(object);
        self.upload = upload;
        Ok(())
    }

    async fn create_image(&mut self, created: &mut Created<GcpResource>) -> Result<()> {
        let name = &self.name;
        let bucket = self.bucket()?;
        let object = self.object.as_deref().context("no uploaded object")?;
        let image_name = self.image_name.clone().context("no image name")?;
        let compute = self.compute()?;
        let body = json!({
            "name": image_name,
            "description": format!("{DEPLOYMENT_TAG}={name}: disk from gs://{bucket}/{object}"),
            "rawDisk": { "source": gcs::public_object_url(bucket, object) },
            "guestOsFeatures": [
                { "type": "UEFI_COMPATIBLE" },
                { "type": "GVNIC" },
                { "type": "SEV_SNP_CAPABLE" },
                { "type": "TDX_CAPABLE" },
            ],
            "architecture": "X86_64",
            "labels": { DEPLOYMENT_TAG: name },
        });
        let what = format!("creating image {image_name}");
        match compute.start_insert("global/images", &body, &what).await? {
            Some(operation) => {
                created.push(GcpResource::Image(image_name.clone()));
                compute.wait(operation, &what, self.wait()).await
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
                Ok(())
            }
        }
    }

    async fn create_firewalls(&mut self, created: &mut Created<GcpResource>) -> Result<()> {
        let name = &self.name;
        let compute = self.compute()?;
        let ingress = self.options.ingress()?;
        let ports: Vec<String> = ingress.ports.iter().map(u16::to_string).collect();
        for (firewall, ranges) in self.firewalls()? {
            let body = json!({
                "name": firewall,
                "description": format!("{DEPLOYMENT_TAG}={name}: agent and workload ports"),
                "network": "global/networks/default",
                "direction": "INGRESS",
                "priority": 1000,
                "allowed": [{ "IPProtocol": "tcp", "ports": ports }],
                "sourceRanges": ranges,
                "targetTags": [name],
            });
            let what = format!("creating firewall rule {firewall}");
            match compute
                .start_insert("global/firewalls", &body, &what)
                .await?
            {
                Some(operation) => {
                    created.push(GcpResource::Firewall(firewall.clone()));
                    compute.wait(operation, &what, self.wait()).await?;
                }
                None => {
                    self.reuse_firewall(&compute, &firewall, &ports, &ranges)
                        .await?
                }
            }
        }
        Ok(())
    }

    /// A firewall rule of the name exists: reused when it is this deployment's with the same
    /// ports and ranges (a rerun after `--keep-on-failure`), refused otherwise.
    async fn reuse_firewall(
        &self,
        compute: &Compute<'_>,
        firewall: &str,
        ports: &[String],
        ranges: &[String],
    ) -> Result<()> {
        let existing: Firewall = compute
            .get(
                &format!("global/firewalls/{firewall}"),
                "reading the firewall rule",
            )
            .await?
            .with_context(|| format!("firewall rule {firewall} exists and vanished"))?;
        let ours = is_ours(&existing, &self.name);
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
        let mut want_ranges = ranges.to_vec();
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
                self.cleanup_command()
            );
        }
        step(format!(
            "firewall rule {firewall} exists already (this deployment's, same ports and ranges): \
             reusing it"
        ));
        Ok(())
    }

    fn instance_body(&self, user_data: &str) -> Result<serde_json::Value> {
        let (name, zone) = (&self.name, &self.zone);
        let confidential = self.confidential()?;
        let image_name = self.image_name.as_deref().context("no image")?;
        let labels = json!({ DEPLOYMENT_TAG: name });
        let mut body = json!({
            "name": name,
            "machineType": format!("zones/{zone}/machineTypes/{}", self.vm_type),
            "confidentialInstanceConfig": { "confidentialInstanceType": confidential.api },
            "scheduling": { "onHostMaintenance": "TERMINATE", "automaticRestart": true },
            "shieldedInstanceConfig": {
                "enableVtpm": true,
                "enableSecureBoot": self.secure_boot,
                "enableIntegrityMonitoring": true,
            },
            "metadata": { "items": [{ "key": GCP_METADATA_KEY, "value": user_data }] },
            "disks": [{
                "boot": true,
                "autoDelete": true,
                "type": "PERSISTENT",
                "initializeParams": {
                    "sourceImage": format!("projects/{}/global/images/{image_name}", self.project),
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
        if let (Some(cpu), Some(object)) = (confidential.min_cpu_platform, body.as_object_mut()) {
            object.insert("minCpuPlatform".into(), json!(cpu));
        }
        Ok(body)
    }

    async fn create_instance(
        &mut self,
        user_data: &str,
        created: &mut Created<GcpResource>,
    ) -> Result<()> {
        let name = self.name.clone();
        let body = self.instance_body(user_data)?;
        let compute = self.compute()?;
        let what = format!("creating instance {name}");
        let Some(operation) = compute
            .start_insert(&compute.zonal("instances"), &body, &what)
            .await?
        else {
            bail!(
                "instance {name} exists already in {}: pick another --name or remove it ({})",
                self.zone,
                self.cleanup_command()
            );
        };
        created.push(GcpResource::Instance(name.clone()));
        let path = compute.zonal(&format!("instances/{name}"));
        if let Err(error) = compute.wait(operation, &what, self.wait()).await {
            // A failed insert usually leaves no instance: then none is reported, kept or deleted.
            if let Ok(None) = compute.get::<Instance>(&path, "reading the instance").await {
                created.pop();
            }
            return Err(error);
        }
        step(format!("waiting for {name} to run with an external IP"));
        let address = runner::poll(
            self.wait(),
            Duration::from_millis(500),
            "the instance to run with an external IP",
            || async {
                let instance: Instance = compute
                    .get(&path, "reading the instance")
                    .await?
                    .with_context(|| format!("instance {name} vanished"))?;
                if matches!(
                    instance.status.as_str(),
                    "TERMINATED" | "STOPPING" | "STOPPED" | "SUSPENDED"
                ) {
                    bail!(
                        "instance {name} is {}: {}",
                        instance.status,
                        instance.status_message.clone().unwrap_or_default()
                    );
                }
                Ok(instance.nat_ip().filter(|_| instance.status == "RUNNING"))
            },
        )
        .await?;
        self.address = Some(address);
        Ok(())
    }
}

pub fn run(args: DeployGcpArgs) -> Result<()> {
    runner::run(GcpDeploy::new(args))
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
    report: &mut Report,
) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let gcp = GcpDeploy::existing(name, project, zone, bucket).await?;
        runner::cleanup(&gcp, dry_run, report).await
    })
}

/// The deployment's resources in creation order: objects, images, firewall, instances.
async fn labelled_resources(
    compute: &Compute<'_>,
    name: &str,
    bucket: Option<&str>,
) -> Result<Vec<GcpResource>> {
    let images: Vec<Image> = compute
        .list_labelled("global/images", DEPLOYMENT_TAG, name)
        .await?;
    let images: Vec<Image> = images
        .into_iter()
        .filter(|image| image.labels.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name))
        .collect();
    let mut resources = labelled_objects(compute.gcp, &images, name, bucket).await?;
    for image in images {
        gce::check_path_segment(&image.name, "image name")?;
        resources.push(GcpResource::Image(image.name));
    }
    resources.extend(tagged_firewalls(compute, name).await?);
    let instances: Vec<Instance> = compute
        .list_labelled(&compute.zonal("instances"), DEPLOYMENT_TAG, name)
        .await?;
    for instance in instances {
        if instance.labels.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name) {
            gce::check_path_segment(&instance.name, "instance name")?;
            resources.push(GcpResource::Instance(instance.name));
        }
    }
    Ok(resources)
}

/// The uploaded objects, found through the images' sources and in `bucket`; ours only: named
/// for the deployment and carrying its tag.
async fn labelled_objects(
    gcp: &Gcp,
    images: &[Image],
    name: &str,
    bucket: Option<&str>,
) -> Result<Vec<GcpResource>> {
    let mut objects = Vec::new();
    for image in images {
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
        let ours = object.starts_with(&format!("{name}-"))
            && object.ends_with(".tar.gz")
            && gce::check_path_segment(&bucket, "bucket").is_ok()
            && matches!(
                gcs::object_exists(gcp, &bucket, &object).await?,
                Some(found) if found.metadata.get(DEPLOYMENT_TAG).map(String::as_str) == Some(name)
            );
        if ours {
            resources.push(GcpResource::Object(bucket, object));
        }
    }
    Ok(resources)
}

/// The firewall rules named for the deployment whose description carries its tag; a rule of
/// such a name made by anyone else is kept, and said so.
async fn tagged_firewalls(compute: &Compute<'_>, name: &str) -> Result<Vec<GcpResource>> {
    let mut resources = Vec::new();
    for firewall in [firewall_name(name), firewall_name_v6(name)] {
        let rule: Option<Firewall> = compute
            .get(
                &format!("global/firewalls/{firewall}"),
                "reading the firewall rule",
            )
            .await?;
        if let Some(rule) = rule {
            if is_ours(&rule, name) && rule.name == firewall {
                resources.push(GcpResource::Firewall(rule.name));
            } else {
                step(format!(
                    "firewall rule {firewall} exists but was not made by cvm-cli for {name}: kept"
                ));
            }
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
        assert_eq!(confidential_type("c3-standard-4").unwrap().tee, Tee::Tdx);
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

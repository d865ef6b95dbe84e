//! `cvm-cli deploy-azure`: a confidential VM (AMD SEV-SNP or Intel TDX) from our own disk image,
//! through the Azure Resource Manager REST API (`arm.rs`), with no Azure CLI needed:
//!
//! 1. resource group (an existing one is used and never deleted; one we create is tagged),
//! 2. managed disk created for upload (`createOption: Upload`, confidential VM security profile),
//!    `beginGetAccess` -> SAS URL -> parallel 512-aligned page writes of at most 4 MiB that skip
//!    zero ranges -> `endGetAccess`,
//! 3. network security group (8000 + extra ports, from the --allow-from ranges only), static
//!    Standard public IP, VNet + subnet, NIC,
//! 4. VM with `securityType: ConfidentialVM`, vTPM on, Secure Boot off unless `--secure-boot`
//!    (the default image is unsigned), attaching the disk with `securityEncryptionType:
//!    VMGuestStateOnly` and carrying the agent's new API token in `userData` (base64 of the
//!    `cvm_attestation::provision::UserData` document, read by the agent from IMDS); then its
//!    public IP address.
//!
//! Every resource carries the tag `cvm-cli-deployment=<name>`; `cvm-cli cleanup --azure <name>`
//! deletes exactly those. Azure resource names take no '_' (the predecessor's default VM name was
//! `cvm_test`): the deployment keeps the name as typed (tag value, resource group default
//! `<name>Rg`), the resources are named with '_' replaced by '-' (`cvm-test`, `cvm-test-nic`...).
//! The runner (`runner.rs`) drives the steps.

pub mod arm;
pub mod quota;

use super::blocks::{self, Block, UploadSettings, UploadStats};
use super::plan::{Plan, TokenPlan};
use super::runner::{self, Cloud, CloudResource, Created, StepContext};
use super::{check_deployment_name, step, token, DeployOptions, SecureBootOption, DEPLOYMENT_TAG};
use crate::cleanup::Report;
use anyhow::{bail, Context, Result};
use arm::{Arm, ArmResource, API_DISKS, API_NETWORK, API_RESOURCES, API_VMS};
use clap::Args;
use cvm_attestation::evidence::{Cloud as CloudKind, Tee};
use serde::Deserialize;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Azure rejects page writes above 4 MiB (Azurite does not: we enforce it ourselves).
pub const PAGE_WRITE_MAX: u64 = 4 << 20;
const MIB: u64 = 1 << 20;
/// Blob service version sent with page writes.
const BLOB_API: &str = "2021-12-02";

/// Regions with confidential VM sizes, per TEE, as Azure documents the DCasv5/ECasv5 (SEV-SNP)
/// and DCesv5/ECesv5 (TDX) families. ARM's answer to "does this region have this size" needs a
/// SKU listing per subscription; a known list refuses a typo (`narnia`) before anything is sent.
const SNP_REGIONS: &[&str] = &[
    "australiaeast",
    "canadacentral",
    "centralindia",
    "centralus",
    "eastasia",
    "eastus",
    "eastus2",
    "germanywestcentral",
    "italynorth",
    "japaneast",
    "koreacentral",
    "northeurope",
    "southeastasia",
    "switzerlandnorth",
    "uaenorth",
    "uksouth",
    "westeurope",
    "westus",
    "westus3",
];
const TDX_REGIONS: &[&str] = &[
    "centralus",
    "eastus",
    "eastus2",
    "northeurope",
    "westeurope",
    "westus",
    "westus3",
];

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials: AZURE_ACCESS_TOKEN, else the Azure CLI login \
    (`az login`), else a managed identity. CVM_AZURE_ARM_ENDPOINT points it at another \
    Resource Manager (tests; then only AZURE_ACCESS_TOKEN is used).\n\nAzure resource names take \
    no '_': a name like cvm_test names its resources cvm-test, cvm-test-nic, ... (the \
    deployment and its tag keep the name as typed).\n\nExample:\n  cvm-cli deploy-azure --image \
    out/tiny-agent/disk.raw --name demo --region \"East US 2\" --additional-ports 443 \
    --allow-from 203.0.113.7/32\n  cvm-cli cleanup --azure demo --resource-group demoRg"
)]
pub struct DeployAzureArgs {
    /// Name of the deployment (tag value); resources are named after it with '_' -> '-'.
    #[arg(long, alias = "vm-name", alias = "vm_name", default_value = "cvm-test")]
    pub name: String,
    /// Resource group (default: `<name>Rg`). An existing group is used and never deleted.
    #[arg(long, alias = "resource_group")]
    pub resource_group: Option<String>,
    /// Azure region, e.g. eastus2 or "East US 2".
    #[arg(long, default_value = "eastus2")]
    pub region: String,
    /// VM size: SEV-SNP DCas_v5/DCads_v5/DCas_v6/DCads_v6 (ECa.. too) or TDX
    /// DCes_v5/DCeds_v5/DCes_v6/DCeds_v6 (ECe.. too).
    #[arg(long, alias = "vm_type", default_value = "Standard_DC2es_v5")]
    pub vm_type: String,
    /// Subscription id (default: AZURE_SUBSCRIPTION_ID, else the Azure CLI's default).
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription: Option<String>,
    #[command(flatten)]
    pub secure_boot: SecureBootOption,
    #[command(flatten)]
    pub options: DeployOptions,
}

/// How the agent's token reaches it on Azure.
const TOKEN_VIA: &str = "the VM's userData (properties.userData, base64; IMDS compute/userData)";

/// What an Azure deploy creates: the group by name, the others by ARM id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureResource {
    Group(String),
    Disk(String),
    Nsg(String),
    PublicIp(String),
    Vnet(String),
    Nic(String),
    Vm(String),
}

impl AzureResource {
    /// From an ARM id of a type cvm-cli creates (a group is never found this way).
    fn from_id(id: &str) -> Option<Self> {
        let lower = id.to_ascii_lowercase();
        type Make = fn(String) -> AzureResource;
        let table: [(&str, Make); 6] = [
            ("/microsoft.compute/virtualmachines/", Self::Vm),
            ("/microsoft.network/networkinterfaces/", Self::Nic),
            ("/microsoft.network/publicipaddresses/", Self::PublicIp),
            ("/microsoft.network/virtualnetworks/", Self::Vnet),
            ("/microsoft.network/networksecuritygroups/", Self::Nsg),
            ("/microsoft.compute/disks/", Self::Disk),
        ];
        table
            .into_iter()
            .find(|(marker, _)| lower.contains(marker))
            .map(|(_, make)| make(id.to_owned()))
    }

    /// Creation order (cleanup deletes in reverse).
    fn order(&self) -> u8 {
        match self {
            Self::Group(_) => 0,
            Self::Disk(_) => 1,
            Self::Nsg(_) => 2,
            Self::PublicIp(_) => 3,
            Self::Vnet(_) => 4,
            Self::Nic(_) => 5,
            Self::Vm(_) => 6,
        }
    }

    fn api(&self) -> &'static str {
        match self {
            Self::Group(_) => API_RESOURCES,
            Self::Disk(_) => API_DISKS,
            Self::Vm(_) => API_VMS,
            Self::Nsg(_) | Self::PublicIp(_) | Self::Vnet(_) | Self::Nic(_) => API_NETWORK,
        }
    }
}

impl CloudResource for AzureResource {
    fn kind(&self) -> &'static str {
        match self {
            Self::Group(_) => "resource group",
            Self::Disk(_) => "disk",
            Self::Nsg(_) => "network security group",
            Self::PublicIp(_) => "public IP",
            Self::Vnet(_) => "VNet",
            Self::Nic(_) => "NIC",
            Self::Vm(_) => "VM",
        }
    }

    fn id(&self) -> String {
        match self {
            Self::Group(id)
            | Self::Disk(id)
            | Self::Nsg(id)
            | Self::PublicIp(id)
            | Self::Vnet(id)
            | Self::Nic(id)
            | Self::Vm(id) => id.clone(),
        }
    }

    fn is_vm(&self) -> bool {
        matches!(self, Self::Vm(_))
    }
}

/// The steps of an Azure deploy.
#[derive(Debug, Clone, Copy)]
pub enum AzureStep {
    Group,
    Disk,
    Nsg,
    PublicIp,
    Vnet,
    Nic,
    Vm,
}

/// One Azure deployment: its settings, and what the steps made so far.
pub struct AzureDeploy {
    names: Names,
    /// As given; normalised by `validate`.
    region: String,
    vm_type: String,
    subscription: Option<String>,
    secure_boot: bool,
    options: DeployOptions,
    arm: Option<Arm>,
    address: Option<String>,
    upload: UploadStats,
}

/// Whether the region has the TEE's sizes; the error names the ones that do.
fn check_region(region: &str, tee: Tee) -> Result<()> {
    let (regions, family) = match tee {
        Tee::Tdx => (TDX_REGIONS, "Intel TDX (DCesv5/ECesv5)"),
        _ => (SNP_REGIONS, "AMD SEV-SNP (DCasv5/ECasv5)"),
    };
    if !regions.contains(&region) {
        bail!(
            "region {region:?} has no {family} confidential VM sizes known to cvm-cli: use one of \
             {}",
            regions.join(", ")
        );
    }
    Ok(())
}

/// The TEE of a confidential VM size, or a clear refusal.
pub fn tee_of(vm_type: &str) -> Result<Tee> {
    let refuse = || {
        anyhow::anyhow!(
            "VM size {vm_type:?} is not a confidential VM size: use an AMD SEV-SNP size \
             (Standard_DC<n>as_v5, DC<n>ads_v5, DC<n>as_v6, DC<n>ads_v6, EC<n>as_v5...) or an \
             Intel TDX size (Standard_DC<n>es_v5, DC<n>eds_v5, DC<n>es_v6, DC<n>eds_v6, \
             EC<n>es_v5...), e.g. Standard_DC2es_v5"
        )
    };
    let lower = vm_type.to_ascii_lowercase();
    let rest = lower.strip_prefix("standard_").ok_or_else(refuse)?;
    let (size, version) = rest.split_once('_').ok_or_else(refuse)?;
    if version != "v5" && version != "v6" {
        return Err(refuse());
    }
    let family = size.get(..2).ok_or_else(refuse)?;
    if family != "dc" && family != "ec" {
        return Err(refuse());
    }
    let after = &size[2..];
    let digits = after.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return Err(refuse());
    }
    match &after[digits..] {
        "as" | "ads" => Ok(Tee::SevSnp),
        "es" | "eds" => Ok(Tee::Tdx),
        _ => Err(refuse()),
    }
}

/// "East US 2" -> "eastus2".
pub fn normalise_region(region: &str) -> Result<String> {
    let region: String = region
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("region {region:?}: use an Azure region name such as eastus2 or \"East US 2\"");
    }
    Ok(region)
}

/// Azure resource names take no '_'.
pub fn resource_name(deployment: &str) -> String {
    deployment.replace('_', "-")
}

fn check_group_name(group: &str) -> Result<()> {
    let ok = !group.is_empty()
        && group.len() <= 90
        && !group.ends_with('.')
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c));
    if !ok {
        bail!("resource group {group:?}: use up to 90 letters, digits, '-', '_', '.', '(' or ')'");
    }
    Ok(())
}

/// The fixed VHD to upload: `--image` itself when it is a VHD, else the builder's up-to-date
/// sibling `disk.vhd`, else one written into `cache` (never into the build folder), named by the
/// image's path, size and time so a rerun reuses it.
pub fn vhd_for(image: &Path, cache: &Path) -> Result<PathBuf> {
    if image.extension().and_then(|e| e.to_str()) == Some("vhd") {
        let len = std::fs::metadata(image)?.len();
        check_vhd(image, len.saturating_sub(512))?;
        return Ok(image.to_owned());
    }
    let raw = std::fs::metadata(image)?;
    let raw_len = raw.len();
    if raw_len % MIB != 0 {
        bail!(
            "{}: {raw_len} bytes is not a whole number of MiB, which Azure needs",
            image.display()
        );
    }
    let fresh = |vhd: &Path| {
        let Ok(meta) = std::fs::metadata(vhd) else {
            return false;
        };
        let newer = matches!((meta.modified(), raw.modified()), (Ok(v), Ok(r)) if v >= r);
        newer && meta.len() == raw_len + 512 && check_vhd(vhd, raw_len).is_ok()
    };
    let sibling = image.with_extension("vhd");
    if fresh(&sibling) {
        return Ok(sibling);
    }
    let epoch = raw
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let digest = {
        use sha2::{Digest, Sha256};
        let absolute = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_owned());
        Sha256::new()
            .chain_update(b"cvm-cli-vhd")
            .chain_update(absolute.as_os_str().as_encoded_bytes())
            .chain_update(raw_len.to_le_bytes())
            .chain_update(epoch.to_le_bytes())
            .finalize()
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    let cached = cache.join(format!("{}.vhd", hex::encode(id)));
    if fresh(&cached) {
        step(format!("reusing the fixed VHD {}", cached.display()));
        return Ok(cached);
    }
    step(format!("writing the fixed VHD {}", cached.display()));
    let partial = cached.with_extension("vhd.partial");
    image_builder::formats::write_vhd(image, &partial, epoch, &id)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &cached).with_context(|| format!("writing {}", cached.display()))?;
    Ok(cached)
}

/// A fixed VHD: whole MiB + 512-byte footer whose current size is the data size.
fn check_vhd(vhd: &Path, data_len: u64) -> Result<()> {
    let file = std::fs::File::open(vhd)?;
    let len = file.metadata()?.len();
    if len < MIB + 512 || len % MIB != 512 || len != data_len + 512 {
        bail!(
            "{}: {len} bytes is not a fixed VHD of whole MiB plus the 512-byte footer",
            vhd.display()
        );
    }
    let mut footer = [0u8; 512];
    file.read_exact_at(&mut footer, len - 512)?;
    let current = u64::from_be_bytes(footer[48..56].try_into()?);
    if &footer[..8] != b"conectix" || current != data_len {
        bail!("{}: no valid fixed VHD footer", vhd.display());
    }
    Ok(())
}

/// Names and ARM ids of what a deploy creates.
struct Names {
    deployment: String,
    group: String,
    vm: String,
    disk: String,
    nsg: String,
    ip: String,
    vnet: String,
    nic: String,
}

impl Names {
    fn new(deployment: &str, group: &str) -> Names {
        let n = resource_name(deployment);
        Names {
            deployment: deployment.to_owned(),
            group: group.to_owned(),
            disk: format!("{n}-osdisk"),
            nsg: format!("{n}-nsg"),
            ip: format!("{n}-ip"),
            vnet: format!("{n}-vnet"),
            nic: format!("{n}-nic"),
            vm: n,
        }
    }
}

fn provider_path(arm: &Arm, group: &str, kind: &str, name: &str) -> String {
    format!(
        "{}/providers/{kind}/{name}",
        arm.group_path(group).trim_end_matches('/')
    )
}

#[derive(Deserialize)]
struct AccessUri {
    #[serde(rename = "accessSAS")]
    access_sas: Option<String>,
    properties: Option<AccessProperties>,
}

#[derive(Deserialize)]
struct AccessProperties {
    output: Option<AccessOutput>,
}

#[derive(Deserialize)]
struct AccessOutput {
    #[serde(rename = "accessSAS")]
    access_sas: Option<String>,
}

#[derive(Deserialize)]
struct PublicIp {
    properties: Option<PublicIpProperties>,
}

#[derive(Deserialize)]
struct PublicIpProperties {
    #[serde(rename = "ipAddress")]
    ip_address: Option<String>,
}

impl AzureDeploy {
    pub fn new(args: DeployAzureArgs) -> Self {
        let group = args
            .resource_group
            .clone()
            .unwrap_or_else(|| format!("{}Rg", args.name));
        Self {
            names: Names::new(&args.name, &group),
            region: args.region,
            vm_type: args.vm_type,
            subscription: args.subscription,
            secure_boot: args.secure_boot.secure_boot,
            options: args.options,
            arm: None,
            address: None,
            upload: UploadStats::default(),
        }
    }

    /// For `cleanup` and `list`: a deployment known by name and group.
    pub async fn existing(
        name: &str,
        group: Option<&str>,
        subscription: Option<&str>,
    ) -> Result<Self> {
        check_deployment_name(name)?;
        let deploy = Self::new(DeployAzureArgs {
            name: name.to_owned(),
            resource_group: group.map(str::to_owned),
            region: String::new(),
            vm_type: String::new(),
            subscription: subscription.map(str::to_owned),
            secure_boot: SecureBootOption { secure_boot: false },
            options: DeployOptions::default(),
        });
        check_group_name(&deploy.names.group)?;
        let arm = Arm::connect(subscription).await?;
        Ok(Self {
            arm: Some(arm),
            ..deploy
        })
    }

    fn arm(&self) -> Result<&Arm> {
        self.arm
            .as_ref()
            .context("not connected to Azure (preflight did not run)")
    }

    fn limit(&self) -> Duration {
        Duration::from_secs(self.options.wait_seconds.max(1))
    }

    fn path(&self, kind: &str, name: &str) -> Result<String> {
        Ok(provider_path(self.arm()?, &self.names.group, kind, name))
    }

    fn vm_path(&self) -> Result<String> {
        self.path("Microsoft.Compute/virtualMachines", &self.names.vm)
    }

    fn disk_path(&self) -> Result<String> {
        self.path("Microsoft.Compute/disks", &self.names.disk)
    }

    fn nsg_path(&self) -> Result<String> {
        self.path("Microsoft.Network/networkSecurityGroups", &self.names.nsg)
    }

    fn ip_path(&self) -> Result<String> {
        self.path("Microsoft.Network/publicIPAddresses", &self.names.ip)
    }

    fn vnet_path(&self) -> Result<String> {
        self.path("Microsoft.Network/virtualNetworks", &self.names.vnet)
    }

    fn nic_path(&self) -> Result<String> {
        self.path("Microsoft.Network/networkInterfaces", &self.names.nic)
    }

    /// A tracked resource's body in this deployment's region with its tag.
    fn with<P>(&self, sku: Option<&'static str>, properties: P) -> body::Tracked<P> {
        with(&self.region, &self.names.deployment, sku, properties)
    }

    /// PUTs a resource, records it, and waits until ARM says it is provisioned.
    async fn put<B: serde::Serialize>(
        &self,
        resource: AzureResource,
        body: &B,
        created: &mut Created<AzureResource>,
    ) -> Result<()> {
        step(format!("creating {} {}", resource.kind(), resource.id()));
        self.arm()?
            .put(&resource.id(), resource.api(), body, self.limit())
            .await?;
        created.push(resource);
        Ok(())
    }
}

impl Cloud for AzureDeploy {
    type Resource = AzureResource;
    type Step = AzureStep;
    const KIND: CloudKind = CloudKind::Azure;
    const PREFLIGHT: &'static str = "credentials, region, names already taken, vCPU quota";

    fn deployment(&self) -> &str {
        &self.names.deployment
    }

    fn options(&self) -> &DeployOptions {
        &self.options
    }

    fn secure_boot(&self) -> bool {
        self.secure_boot
    }

    fn validate(&self, image: &Path) -> Result<()> {
        check_deployment_name(&self.names.deployment)?;
        self.options.ingress()?;
        let tee = tee_of(&self.vm_type)?;
        check_region(&normalise_region(&self.region)?, tee)?;
        check_group_name(&self.names.group)?;
        check_azure_image(image)
    }

    fn plan(&self, image: &Path) -> Result<Plan> {
        let ingress = self.options.ingress()?;
        Ok(Plan {
            cloud: Self::KIND,
            deployment: self.names.deployment.clone(),
            region: normalise_region(&self.region)?,
            vm_type: self.vm_type.clone(),
            tee: tee_of(&self.vm_type)?,
            image: image.to_owned(),
            image_bytes: std::fs::metadata(image)?.len(),
            ports: ingress.ports.clone(),
            allow_from: ingress.all(),
            warnings: ingress.warnings(true),
            api_token: TokenPlan {
                file: token::token_path("azure", &self.names.deployment)?,
                passed_via: TOKEN_VIA.into(),
            },
            secure_boot: SecureBootOption {
                secure_boot: self.secure_boot,
            }
            .plan(),
            steps: self.steps().into_iter().map(|s| self.describe(s)).collect(),
        })
    }

    /// Credentials and subscription, one authenticated read (the resource group), clashes (a
    /// VM or disk of the deployment's names that is already there), and the vCPU quota.
    async fn preflight(&mut self) -> Result<()> {
        self.region = normalise_region(&self.region)?;
        let arm = Arm::connect(self.subscription.as_deref()).await?;
        arm.get::<ArmResource>(&arm.group_path(&self.names.group), API_RESOURCES)
            .await
            .context("preflight: checking the credentials and the resource group")?;
        self.arm = Some(arm);
        for (path, api, what) in [
            (self.vm_path()?, API_VMS, "VM"),
            (self.disk_path()?, API_DISKS, "disk"),
        ] {
            if self.arm()?.get::<ArmResource>(&path, api).await?.is_some() {
                bail!(
                    "{what} {path} already exists: pick another --name, or remove the old \
                     deployment with {}",
                    self.cleanup_command()
                );
            }
        }
        quota::check(self.arm()?, &self.region, &self.vm_type).await
    }

    fn steps(&self) -> Vec<AzureStep> {
        vec![
            AzureStep::Group,
            AzureStep::Disk,
            AzureStep::Nsg,
            AzureStep::PublicIp,
            AzureStep::Vnet,
            AzureStep::Nic,
            AzureStep::Vm,
        ]
    }

    fn describe(&self, step: AzureStep) -> String {
        let names = &self.names;
        match step {
            AzureStep::Group => format!(
                "resource group {} in {} (an existing one is used, never deleted)",
                names.group,
                normalise_region(&self.region).unwrap_or_default()
            ),
            AzureStep::Disk => format!(
                "managed disk {} for upload (ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey, \
                 Hyper-V Gen2) from the fixed VHD (made in the cache when needed); upload its \
                 non-zero pages in writes of at most 4 MiB, {} in parallel",
                names.disk, self.options.parallel
            ),
            AzureStep::Nsg => format!(
                "network security group {}: {} (one rule per port and address family)",
                names.nsg,
                self.options
                    .ingress()
                    .map(|i| i.describe())
                    .unwrap_or_default()
            ),
            AzureStep::PublicIp => format!("public IP {} (Standard, static)", names.ip),
            AzureStep::Vnet => format!("VNet {} with subnet default 10.0.0.0/24", names.vnet),
            AzureStep::Nic => format!("NIC {}", names.nic),
            AzureStep::Vm => {
                let renamed = if names.vm != names.deployment {
                    format!(" (from {}: Azure names take no '_')", names.deployment)
                } else {
                    String::new()
                };
                format!(
                    "VM {}{renamed} ({}, ConfidentialVM with VMGuestStateOnly, vTPM, Secure Boot \
                     {}, the API token in userData), then its public IP",
                    names.vm,
                    self.vm_type,
                    if self.secure_boot { "on" } else { "off" }
                )
            }
        }
    }

    async fn create(
        &mut self,
        step: AzureStep,
        context: &StepContext,
        created: &mut Created<AzureResource>,
    ) -> Result<()> {
        match step {
            AzureStep::Group => self.create_group(created).await,
            AzureStep::Disk => self.create_disk(&context.image, created).await,
            AzureStep::Nsg => self.create_nsg(created).await,
            AzureStep::PublicIp => {
                let body = self.with(
                    Some("Standard"),
                    body::PublicIp {
                        allocation_method: "Static",
                        address_version: "IPv4",
                    },
                );
                self.put(AzureResource::PublicIp(self.ip_path()?), &body, created)
                    .await
            }
            AzureStep::Vnet => {
                let body = self.with(
                    None,
                    body::Vnet {
                        address_space: body::AddressSpace {
                            address_prefixes: vec!["10.0.0.0/16"],
                        },
                        subnets: vec![body::Named {
                            name: "default".to_owned(),
                            properties: body::Subnet {
                                address_prefix: "10.0.0.0/24",
                            },
                        }],
                    },
                );
                self.put(AzureResource::Vnet(self.vnet_path()?), &body, created)
                    .await
            }
            AzureStep::Nic => {
                let body = self.with(
                    None,
                    body::Nic {
                        network_security_group: body::Id {
                            id: self.nsg_path()?,
                        },
                        ip_configurations: vec![body::Named {
                            name: "ipconfig1".to_owned(),
                            properties: body::IpConfiguration {
                                private_allocation_method: "Dynamic",
                                subnet: body::Id {
                                    id: format!("{}/subnets/default", self.vnet_path()?),
                                },
                                public_ip_address: body::Id {
                                    id: self.ip_path()?,
                                },
                            },
                        }],
                    },
                );
                self.put(AzureResource::Nic(self.nic_path()?), &body, created)
                    .await
            }
            AzureStep::Vm => self.create_vm(&context.user_data, created).await,
        }
    }

    fn outcome(&self) -> Result<(String, UploadStats)> {
        let address = self.address.clone().context("the VM has no address")?;
        Ok((address, self.upload.clone()))
    }

    async fn delete(&self, resource: &AzureResource) -> Result<()> {
        let arm = self.arm()?;
        let path = match resource {
            AzureResource::Group(name) => arm.group_path(name),
            other => other.id(),
        };
        arm.delete(&path, resource.api(), self.limit()).await
    }

    /// The tagged resources of types cvm-cli creates, in creation order (the group is handled
    /// by `cleanup`, which keeps it unless cvm-cli made it and it is empty).
    async fn find_tagged(&self) -> Result<Vec<AzureResource>> {
        let arm = self.arm()?;
        let tagged = arm
            .tagged_in_group(&self.names.group, DEPLOYMENT_TAG, &self.names.deployment)
            .await?;
        let mut found = Vec::new();
        for resource in tagged {
            match AzureResource::from_id(&resource.id) {
                Some(ours) => found.push(ours),
                None => crate::output::progress(format_args!(
                    "  skipped {} (not a type cvm-cli creates)",
                    resource.id
                )),
            }
        }
        found.sort_by_key(AzureResource::order);
        Ok(found)
    }

    fn cleanup_command(&self) -> String {
        let subscription = self
            .arm
            .as_ref()
            .map(|arm| arm.subscription.clone())
            .or_else(|| self.subscription.clone())
            .map(|s| format!(" --subscription {s}"))
            .unwrap_or_default();
        format!(
            "cvm-cli cleanup --azure {} --resource-group {}{subscription}",
            self.names.deployment, self.names.group
        )
    }

    fn region(&self) -> String {
        normalise_region(&self.region).unwrap_or_else(|_| self.region.clone())
    }

    fn vm_type(&self) -> String {
        self.vm_type.clone()
    }
}

impl AzureDeploy {
    /// An existing group (ours from an earlier deploy, or the user's) is used and never deleted
    /// by a rollback; one made now is recorded.
    async fn create_group(&mut self, created: &mut Created<AzureResource>) -> Result<()> {
        let arm = self.arm()?;
        let names = &self.names;
        let group_path = arm.group_path(&names.group);
        match arm
            .get::<ArmResource>(&group_path, API_RESOURCES)
            .await
            .context("reading the resource group")?
        {
            Some(existing) if existing.tag(DEPLOYMENT_TAG) == Some(names.deployment.as_str()) => {
                step(format!(
                    "resource group {} exists (made by an earlier deploy of {}): using it, a \
                     failure now will not delete it",
                    names.group, names.deployment
                ));
            }
            Some(_) => step(format!(
                "using the existing resource group {} (not made by cvm-cli: it is never deleted)",
                names.group
            )),
            None => {
                step(format!("creating resource group {}", names.group));
                let body = body::Tracked::<body::Empty> {
                    properties: None,
                    ..self.with(None, body::Empty {})
                };
                arm.put(&group_path, API_RESOURCES, &body, self.limit())
                    .await?;
                created.push(AzureResource::Group(names.group.clone()));
            }
        }
        Ok(())
    }

    /// The disk for upload, its SAS, the pages, and the SAS revoked again (also after a failed
    /// upload). The fixed VHD is made here (in the cache) when the image is not one.
    async fn create_disk(
        &mut self,
        image: &Path,
        created: &mut Created<AzureResource>,
    ) -> Result<()> {
        let vhd = {
            let image = image.to_owned();
            tokio::task::spawn_blocking(move || vhd_for(&image, &runner::cache_dir()?)).await??
        };
        let vhd_bytes = std::fs::metadata(&vhd)?.len();
        let disk_path = self.disk_path()?;
        let body = self.with(
            Some("Premium_LRS"),
            body::Disk {
                os_type: "Linux",
                hyper_v_generation: "V2",
                creation_data: body::CreationData {
                    create_option: "Upload",
                    upload_size_bytes: vhd_bytes,
                },
                security_profile: body::DiskSecurity {
                    security_type: "ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey",
                },
            },
        );
        self.put(AzureResource::Disk(disk_path.clone()), &body, created)
            .await?;
        let arm = self.arm()?;
        step("granting write access to the disk (SAS)");
        let grant = body::GrantAccess {
            access: "Write",
            duration_in_seconds: 86400,
        };
        let answer = arm
            .post(
                &format!("{disk_path}/beginGetAccess"),
                API_DISKS,
                &grant,
                self.limit(),
            )
            .await?;
        let access: AccessUri = arm::parse(&answer, "beginGetAccess result")?;
        let sas = access
            .access_sas
            .or_else(|| access.properties?.output?.access_sas)
            .context("beginGetAccess returned no accessSAS")?;
        let sas = reqwest::Url::parse(&sas).context("beginGetAccess returned a bad SAS URL")?;
        if sas.scheme() != "https" && !(arm.is_overridden() && sas.scheme() == "http") {
            bail!("beginGetAccess returned a SAS URL that is not https");
        }
        step(format!("uploading {} to the disk", vhd.display()));
        let uploaded = upload_pages(&sas, &vhd, &self.options).await;
        step("revoking the disk's write access");
        let revoked = arm
            .post(
                &format!("{disk_path}/endGetAccess"),
                API_DISKS,
                &body::Empty {},
                self.limit(),
            )
            .await;
        let upload = uploaded?;
        revoked?;
        step(format!(
            "uploaded {} of {} blocks of 4 MiB in {:.1} s",
            upload.blocks_uploaded, upload.blocks_total, upload.seconds
        ));
        self.upload = upload;
        Ok(())
    }

    /// One rule per port and address family (an NSG rule takes the ranges of one family).
    async fn create_nsg(&mut self, created: &mut Created<AzureResource>) -> Result<()> {
        let ingress = self.options.ingress()?;
        let rules: Vec<_> = ingress
            .by_family()
            .into_iter()
            .filter(|(_, ranges)| !ranges.is_empty())
            .flat_map(|(ipv6, ranges)| {
                ingress
                    .ports
                    .iter()
                    .map(move |port| (*port, ipv6, ranges.clone()))
            })
            .enumerate()
            .map(|(n, (port, ipv6, ranges))| body::Named {
                name: format!("allow-tcp-{port}{}", if ipv6 { "-ipv6" } else { "" }),
                properties: body::Rule {
                    protocol: "Tcp",
                    source_port_range: "*",
                    destination_port_range: port.to_string(),
                    source_address_prefixes: ranges,
                    destination_address_prefix: "*",
                    access: "Allow",
                    priority: 1000 + n as u32,
                    direction: "Inbound",
                },
            })
            .collect();
        let body = self.with(
            None,
            body::Nsg {
                security_rules: rules,
            },
        );
        self.put(AzureResource::Nsg(self.nsg_path()?), &body, created)
            .await
    }

    async fn create_vm(
        &mut self,
        user_data: &str,
        created: &mut Created<AzureResource>,
    ) -> Result<()> {
        use base64::Engine;
        let vm_path = self.vm_path()?;
        let vm_body = self.with(
            None,
            body::Vm {
                hardware_profile: body::HardwareProfile {
                    vm_size: self.vm_type.clone(),
                },
                storage_profile: body::StorageProfile {
                    os_disk: body::OsDisk {
                        os_type: "Linux",
                        create_option: "Attach",
                        managed_disk: body::ManagedDisk {
                            id: self.disk_path()?,
                            security_profile: body::VmDiskSecurity {
                                security_encryption_type: "VMGuestStateOnly",
                            },
                        },
                    },
                },
                network_profile: body::NetworkProfile {
                    network_interfaces: vec![body::NicReference {
                        id: self.nic_path()?,
                        properties: body::NicReferenceProperties { primary: true },
                    }],
                },
                security_profile: body::VmSecurity {
                    security_type: "ConfidentialVM",
                    uefi_settings: body::UefiSettings {
                        secure_boot_enabled: self.secure_boot,
                        v_tpm_enabled: true,
                    },
                },
                user_data: base64::engine::general_purpose::STANDARD.encode(user_data),
                diagnostics_profile: body::DiagnosticsProfile {
                    boot_diagnostics: body::BootDiagnostics { enabled: true },
                },
            },
        );
        let arm = self.arm()?;
        step(format!(
            "creating confidential VM {} ({})",
            self.names.vm, self.vm_type
        ));
        let result = arm.put(&vm_path, API_VMS, &vm_body, self.limit()).await;
        // A failed VM creation may still have left the VM resource behind.
        if result.is_ok() || matches!(arm.get::<ArmResource>(&vm_path, API_VMS).await, Ok(Some(_)))
        {
            created.push(AzureResource::Vm(vm_path.clone()));
        }
        result?;
        let ip_path = self.ip_path()?;
        let address = runner::poll(
            self.limit(),
            Duration::from_secs(2),
            &format!("public IP {} to get an address", self.names.ip),
            || async {
                let ip: Option<PublicIp> = arm.get(&ip_path, API_NETWORK).await?;
                Ok(ip
                    .and_then(|ip| ip.properties?.ip_address)
                    .filter(|a| a.parse::<std::net::IpAddr>().is_ok()))
            },
        )
        .await?;
        self.address = Some(address);
        Ok(())
    }
}

pub fn run(args: DeployAzureArgs) -> Result<()> {
    runner::run(AzureDeploy::new(args))
}

/// The VHD the upload needs can be made from the image: a whole number of MiB (or a VHD).
fn check_azure_image(image: &Path) -> Result<()> {
    if image.extension().and_then(|e| e.to_str()) == Some("vhd") {
        return Ok(());
    }
    let len = std::fs::metadata(image)?.len();
    if len % MIB != 0 {
        bail!(
            "{}: {len} bytes is not a whole number of MiB, which Azure needs",
            image.display()
        );
    }
    Ok(())
}

/// Writes the VHD's non-zero 4 MiB ranges into the disk's page blob through its SAS URL.
async fn upload_pages(
    sas: &reqwest::Url,
    vhd: &Path,
    options: &DeployOptions,
) -> Result<UploadStats> {
    let size = std::fs::metadata(vhd)?.len();
    if size % 512 != 0 {
        bail!("{}: size {size} is not a multiple of 512", vhd.display());
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut url = sas.clone();
    url.query_pairs_mut().append_pair("comp", "page");
    let settings = UploadSettings {
        block_bytes: PAGE_WRITE_MAX,
        parallel: options.parallel.into(),
        progress: !options.json() && std::io::stderr().is_terminal(),
        attempts: 5,
    };
    blocks::upload(vhd, &settings, |block: Block| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let start = block.index * PAGE_WRITE_MAX;
            // blocks.rs pads the last block; the blob ends where the VHD does.
            let len = PAGE_WRITE_MAX.min(size.saturating_sub(start));
            let mut data = block.data;
            data.truncate(len as usize);
            put_page(&http, url, start, data).await
        }
    })
    .await
}

/// One `Put Page` (update) of 512-aligned `data` at `start`.
pub async fn put_page(
    http: &reqwest::Client,
    url: reqwest::Url,
    start: u64,
    data: hyper::body::Bytes,
) -> Result<()> {
    let len = data.len() as u64;
    if len == 0 || len % 512 != 0 || start % 512 != 0 || len > PAGE_WRITE_MAX {
        bail!("page write of {len} bytes at {start}: must be 512-aligned and at most 4 MiB");
    }
    let response = http
        .put(url)
        .header("x-ms-page-write", "update")
        .header("x-ms-range", format!("bytes={start}-{}", start + len - 1))
        .header("x-ms-version", BLOB_API)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(data)
        .send()
        .await
        .with_context(|| format!("page write at {start}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::CREATED {
        let body = super::net::read_bounded(response, 64 << 10)
            .await
            .unwrap_or_default();
        bail!(
            "page write at {start}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    Ok(())
}

/// A tracked resource's body: location, our tag, SKU, properties.
fn with<P>(
    region: &str,
    deployment: &str,
    sku: Option<&'static str>,
    properties: P,
) -> body::Tracked<P> {
    body::Tracked {
        location: region.to_owned(),
        tags: [(DEPLOYMENT_TAG.to_owned(), deployment.to_owned())].into(),
        sku: sku.map(|name| body::Sku { name }),
        properties: Some(properties),
    }
}

/// ARM request bodies, as documented for the api-versions in `arm.rs`.
mod body;

/// `cvm-cli cleanup --azure NAME`: deletes the resources tagged with NAME in the group, then the
/// group if this CLI created it (tagged) and nothing else is left in it.
pub fn cleanup(
    name: &str,
    group: Option<&str>,
    subscription: Option<&str>,
    dry_run: bool,
    report: &mut Report,
) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let azure = AzureDeploy::existing(name, group, subscription).await?;
        let group = azure.names.group.clone();
        let tagged = azure.find_tagged().await?;
        for resource in tagged.iter().rev() {
            let (kind, id) = (resource.kind(), resource.id());
            if dry_run {
                report.deleted(kind, &id, format_args!("would delete {kind} {id}"));
                continue;
            }
            match azure.delete(resource).await {
                Ok(()) => report.deleted(kind, &id, format_args!("deleted {kind} {id}")),
                Err(error) => {
                    let line = format!("could not delete {kind} {id}: {error:#}");
                    report.failed(kind, &id, &error, &line);
                }
            }
        }
        delete_group_if_ours(&azure, &group, name, dry_run, report).await?;
        if tagged.is_empty() {
            report.note(format!(
                "no resources tagged {DEPLOYMENT_TAG}={name} in {group}"
            ));
        }
        if !report.failed.is_empty() {
            bail!("{} deletion(s) failed", report.failed.len());
        }
        token::forget("azure", name, !tagged.is_empty(), dry_run, report)
    })
}

/// The group goes only when cvm-cli made it for this deployment and nothing else is in it.
async fn delete_group_if_ours(
    azure: &AzureDeploy,
    group: &str,
    name: &str,
    dry_run: bool,
    report: &mut Report,
) -> Result<()> {
    const KIND: &str = "resource group";
    let arm = azure.arm()?;
    let group_path = arm.group_path(group);
    match arm.get::<ArmResource>(&group_path, API_RESOURCES).await? {
        None => report.note(format!("resource group {group} does not exist")),
        Some(rg) if rg.tag(DEPLOYMENT_TAG) != Some(name) => report.note(format!(
            "kept resource group {group}: cvm-cli did not create it"
        )),
        Some(_) => {
            let left = if dry_run {
                Vec::new()
            } else {
                arm.list_group(group).await?
            };
            if !left.is_empty() {
                report.note(format!(
                    "kept resource group {group}: it still holds {} resource(s) not made by \
                     this deployment",
                    left.len()
                ));
            } else if dry_run {
                report.deleted(KIND, group, format_args!("would delete {KIND} {group}"));
            } else {
                match azure.delete(&AzureResource::Group(group.to_owned())).await {
                    Ok(()) => report.deleted(KIND, group, format_args!("deleted {KIND} {group}")),
                    Err(error) => {
                        let line = format!("could not delete {KIND} {group}: {error:#}");
                        report.failed(KIND, group, &error, &line);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidential_sizes_are_told_apart() {
        for snp in [
            "Standard_DC2as_v5",
            "Standard_DC4ads_v5",
            "Standard_DC2as_v6",
            "standard_dc96ads_v6",
            "Standard_EC8as_v5",
        ] {
            assert_eq!(tee_of(snp).unwrap(), Tee::SevSnp, "{snp}");
        }
        for tdx in [
            "Standard_DC2es_v5",
            "Standard_DC2eds_v5",
            "Standard_DC4es_v6",
            "Standard_EC16eds_v5",
        ] {
            assert_eq!(tee_of(tdx).unwrap(), Tee::Tdx, "{tdx}");
        }
        for bad in [
            "Standard_D2s_v5",
            "Standard_DC2s_v3",
            "Standard_DC2as_v4",
            "DC2as_v5",
            "Standard_DCas_v5",
            "Standard_B1s",
            "",
        ] {
            let text = tee_of(bad).unwrap_err().to_string();
            assert!(text.contains("not a confidential VM size"), "{bad}: {text}");
        }
    }

    #[test]
    fn regions_and_names_are_normalised() {
        assert_eq!(normalise_region("East US 2").unwrap(), "eastus2");
        assert_eq!(normalise_region("westeurope").unwrap(), "westeurope");
        assert!(normalise_region("east-us").is_err());
        assert_eq!(resource_name("cvm_test"), "cvm-test");
        assert!(check_group_name("cvm_testRg").is_ok());
        assert!(check_group_name("a/b").is_err());
    }

    #[test]
    fn a_vhd_is_made_once_in_the_cache_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let raw = build.join("disk.raw");
        let file = std::fs::File::create(&raw).unwrap();
        file.set_len(3 * MIB).unwrap();
        file.write_all_at(b"hello", MIB).unwrap();
        let vhd = vhd_for(&raw, &cache).unwrap();
        assert_eq!(vhd.parent(), Some(cache.as_path()));
        assert_eq!(
            std::fs::read_dir(&build).unwrap().count(),
            1,
            "nothing written into the build folder"
        );
        assert_eq!(std::fs::metadata(&vhd).unwrap().len(), 3 * MIB + 512);
        check_vhd(&vhd, 3 * MIB).unwrap();
        let modified = std::fs::metadata(&vhd).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vhd_for(&raw, &cache).unwrap(), vhd);
        assert_eq!(
            std::fs::metadata(&vhd).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(vhd_for(&vhd, &cache).unwrap(), vhd);

        file.set_len(3 * MIB + 1).unwrap();
        assert!(vhd_for(&raw, &cache)
            .unwrap_err()
            .to_string()
            .contains("whole number of MiB"));
    }

    #[test]
    fn regions_are_checked_per_tee() {
        assert!(check_region("eastus2", Tee::Tdx).is_ok());
        assert!(check_region("southeastasia", Tee::SevSnp).is_ok());
        let said = check_region("narnia", Tee::Tdx).unwrap_err().to_string();
        assert!(
            said.contains("\"narnia\"") && said.contains("eastus2"),
            "{said}"
        );
    }
}

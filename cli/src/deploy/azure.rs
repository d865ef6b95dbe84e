//! `cvm-cli deploy-azure`: a confidential VM (AMD SEV-SNP or Intel TDX) from our own disk image,
//! through the Azure Resource Manager REST API (`arm.rs`), with no Azure CLI needed:
//!
//! 1. resource group (an existing one is used and never deleted; one we create is tagged),
//! 2. managed disk created for upload (`createOption: Upload`, confidential VM security profile),
//!    `beginGetAccess` -> SAS URL -> parallel 512-aligned page writes of at most 4 MiB that skip
//!    zero ranges -> `endGetAccess`,
//! 3. network security group (8000 + extra ports, from the --allow-from ranges only), static Standard public IP, VNet + subnet, NIC,
//! 4. VM with `securityType: ConfidentialVM`, vTPM on, Secure Boot off unless `--secure-boot`
//!    (the default image is unsigned), attaching the disk with `securityEncryptionType:
//!    VMGuestStateOnly` and carrying the agent's new API token in `userData` (base64 of the
//!    `cvm_attestation::provision::UserData` document, read by the agent from IMDS); then its
//!    public IP address.
//!
//! Every resource carries the tag `cvm-cli-deployment=<name>`; `cvm-cli cleanup --azure <name>`
//! deletes exactly those. Azure resource names take no '_' (the predecessor's default VM name is
//! `cvm_test`): the deployment keeps the name as typed (tag value, resource group default
//! `<name>Rg`), the resources are named with '_' replaced by '-' (`cvm-test`, `cvm-test-nic`...).

use super::arm::{self, Arm, ArmResource, API_DISKS, API_NETWORK, API_RESOURCES, API_VMS};
use super::blocks::{self, Block, UploadSettings, UploadStats};
use super::plan::TokenPlan;
use super::plan::{report_kept, update_command, verify_command, Deployed, Plan, Resource};
use super::token::{self, DeployToken};
use super::{check_deployment_name, step, DeployOptions, SecureBootOption, DEPLOYMENT_TAG};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Azure rejects page writes above 4 MiB (Azurite does not: we enforce it ourselves).
pub const PAGE_WRITE_MAX: u64 = 4 << 20;
const MIB: u64 = 1 << 20;
/// Blob service version sent with page writes.
const BLOB_API: &str = "2021-12-02";

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials: AZURE_ACCESS_TOKEN, else the Azure CLI login \
    (`az login`), else a managed identity. CVM_AZURE_ARM_ENDPOINT points it at another \
    Resource Manager (tests; then only AZURE_ACCESS_TOKEN is used).\n\nAzure resource names take no '_': a VM name like cvm_test \
    names its resources cvm-test, cvm-test-nic, ... (the deployment and its tag keep the name \
    as typed).\n\nExample:\n  cvm-cli deploy-azure --image out/tiny-agent/disk.raw --vm_name \
    demo --region \"East US 2\" --additional_ports 443 --allow-from 203.0.113.7/32\n  cvm-cli cleanup --azure demo \
    --resource-group demoRg"
)]
pub struct DeployAzureArgs {
    /// Name of the deployment (tag value); resources are named after it with '_' -> '-'.
    #[arg(long, visible_alias = "vm_name", default_value = "cvm_test")]
    pub vm_name: String,
    /// Resource group (default: `<vm name>Rg`). An existing group is used and never deleted.
    #[arg(long, visible_alias = "resource_group")]
    pub resource_group: Option<String>,
    /// Azure region, e.g. eastus2 or "East US 2".
    #[arg(long, default_value = "eastus2")]
    pub region: String,
    /// VM size: SEV-SNP DCas_v5/DCads_v5/DCas_v6/DCads_v6 (ECa.. too) or TDX
    /// DCes_v5/DCeds_v5/DCes_v6/DCeds_v6 (ECe.. too).
    #[arg(long, visible_alias = "vm_type", default_value = "Standard_DC2es_v5")]
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

pub fn run(args: DeployAzureArgs) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(deploy(args))
}

/// The TEE of a confidential VM size, or a clear refusal.
pub fn tee_of(vm_type: &str) -> Result<&'static str> {
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
        "as" | "ads" => Ok("AMD SEV-SNP"),
        "es" | "eds" => Ok("Intel TDX"),
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

/// The fixed VHD to upload: `--image` itself when it is a VHD, else the up-to-date sibling
/// `disk.vhd`, else one written now next to the raw image (or in the temp dir).
pub fn vhd_for(image: &Path) -> Result<PathBuf> {
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
    let sibling = image.with_extension("vhd");
    if let Ok(vhd) = std::fs::metadata(&sibling) {
        let fresh = match (vhd.modified(), raw.modified()) {
            (Ok(vhd_time), Ok(raw_time)) => vhd_time >= raw_time,
            _ => false,
        };
        if fresh && vhd.len() == raw_len + 512 && check_vhd(&sibling, raw_len).is_ok() {
            return Ok(sibling);
        }
    }
    let epoch = raw
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let id = {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"cvm-cli-vhd")
            .chain_update(raw_len.to_le_bytes())
            .chain_update(epoch.to_le_bytes())
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    };
    step(format!("writing the fixed VHD {}", sibling.display()));
    match image_builder::formats::write_vhd(image, &sibling, epoch, &id) {
        Ok(_) => Ok(sibling),
        Err(error) => {
            let temp = std::env::temp_dir().join(format!("cvm-cli-{}.vhd", std::process::id()));
            step(format!(
                "cannot write {} ({error}); writing {} instead",
                sibling.display(),
                temp.display()
            ));
            image_builder::formats::write_vhd(image, &temp, epoch, &id)
                .with_context(|| format!("writing {}", temp.display()))?;
            Ok(temp)
        }
    }
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

/// The api-version and our word for an ARM resource type.
fn kind_of(id: &str) -> (&'static str, &'static str, u8) {
    let lower = id.to_ascii_lowercase();
    let table: [(&str, &str, &str, u8); 6] = [
        ("/microsoft.compute/virtualmachines/", "VM", API_VMS, 0),
        (
            "/microsoft.network/networkinterfaces/",
            "NIC",
            API_NETWORK,
            1,
        ),
        (
            "/microsoft.network/publicipaddresses/",
            "public IP",
            API_NETWORK,
            2,
        ),
        (
            "/microsoft.network/virtualnetworks/",
            "VNet",
            API_NETWORK,
            3,
        ),
        (
            "/microsoft.network/networksecuritygroups/",
            "network security group",
            API_NETWORK,
            4,
        ),
        ("/microsoft.compute/disks/", "disk", API_DISKS, 5),
    ];
    for (marker, kind, api, order) in table {
        if lower.contains(marker) {
            return (kind, api, order);
        }
    }
    ("resource group", API_RESOURCES, 6)
}

async fn deploy(args: DeployAzureArgs) -> Result<()> {
    check_deployment_name(&args.vm_name)?;
    let ingress = args.options.ingress()?;
    let tee = tee_of(&args.vm_type)?;
    let region = normalise_region(&args.region)?;
    let group = args
        .resource_group
        .clone()
        .unwrap_or_else(|| format!("{}Rg", args.vm_name));
    check_group_name(&group)?;
    let image = args.options.image()?;
    let names = Names::new(&args.vm_name, &group);
    let image_bytes = std::fs::metadata(&image)?.len();
    let renamed = if names.vm != args.vm_name {
        format!(" (from {}: Azure names take no '_')", args.vm_name)
    } else {
        String::new()
    };
    let plan = Plan {
        cloud: "azure",
        deployment: args.vm_name.clone(),
        region: region.clone(),
        vm_type: args.vm_type.clone(),
        tee,
        image: image.clone(),
        image_bytes,
        ports: ingress.ports.clone(),
        allow_from: ingress.all(),
        warnings: ingress.warnings(true),
        api_token: TokenPlan {
            file: token::token_path("azure", &args.vm_name)?,
            passed_via: TOKEN_VIA.into(),
        },
        secure_boot: args.secure_boot.plan(),
        steps: vec![
            format!("resource group {group} in {region} (an existing one is used, never deleted)"),
            format!(
                "managed disk {} for upload (ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey, \
                 Hyper-V Gen2) from the fixed VHD; upload its non-zero pages in writes of at most \
                 4 MiB, {} in parallel",
                names.disk, args.options.parallel
            ),
            format!(
                "network security group {}: {} (one rule per port and address family)",
                names.nsg,
                ingress.describe()
            ),
            format!("public IP {} (Standard, static)", names.ip),
            format!("VNet {} with subnet default 10.0.0.0/24", names.vnet),
            format!("NIC {}", names.nic),
            format!(
                "VM {}{renamed} ({}, ConfidentialVM with VMGuestStateOnly, vTPM, Secure Boot {}, \
                 the API token in userData), then its public IP",
                names.vm,
                args.vm_type,
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

    let vhd = vhd_for(&image)?;
    let arm = Arm::connect(args.subscription.as_deref()).await?;
    let mut token = DeployToken::create(
        "azure",
        &args.vm_name,
        &cleanup_command(&names, &arm.subscription),
    )?;
    let user_data = token.user_data_base64()?;
    let mut created: Vec<Resource> = Vec::new();
    match create_everything(&args, &arm, &names, &region, &vhd, &user_data, &mut created).await {
        Ok((address, upload)) => {
            token.keep();
            Deployed {
                cloud: "azure",
                deployment: args.vm_name.clone(),
                region,
                vm_type: args.vm_type.clone(),
                verify_command: verify_command(&address),
                update_command: update_command(&address, &token.path),
                api_token_file: token.path.clone(),
                cleanup_command: cleanup_command(&names, &arm.subscription),
                address,
                resources: created,
                upload,
            }
            .finish(&args.options)
        }
        Err(error) => {
            if created.is_empty() {
                eprintln!("deploy failed; it had created nothing");
                token.after_failure(false);
                return Err(error);
            }
            if args.options.keep_on_failure {
                report_kept(&created, &cleanup_command(&names, &arm.subscription));
                token.after_failure(created.iter().any(|r| r.kind == "VM"));
            } else {
                eprintln!("deploy failed ({error}); deleting what it created, newest first:");
                let limit = lro_limit(&args.options);
                let mut left = Vec::new();
                for resource in created.iter().rev() {
                    let (_, api, _) = kind_of(&resource.id);
                    match arm.delete(&resource.id, api, limit).await {
                        Ok(()) => eprintln!("  deleted {} {}", resource.kind, resource.id),
                        Err(delete_error) => {
                            eprintln!(
                                "  NOT deleted {} {}: {delete_error:#}",
                                resource.kind, resource.id
                            );
                            left.push(resource);
                        }
                    }
                }
                if !left.is_empty() {
                    eprintln!(
                        "{} resource(s) are left; remove them with: {}",
                        left.len(),
                        cleanup_command(&names, &arm.subscription)
                    );
                }
                token.after_failure(false);
            }
            Err(error)
        }
    }
}

fn cleanup_command(names: &Names, subscription: &str) -> String {
    format!(
        "cvm-cli cleanup --azure {} --resource-group {} --subscription {subscription}",
        names.deployment, names.group
    )
}

fn lro_limit(options: &DeployOptions) -> Duration {
    Duration::from_secs(options.wait_seconds.max(1))
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

/// The steps; each resource is recorded in `created` as soon as it exists.
async fn create_everything(
    args: &DeployAzureArgs,
    arm: &Arm,
    names: &Names,
    region: &str,
    vhd: &Path,
    user_data: &str,
    created: &mut Vec<Resource>,
) -> Result<(String, UploadStats)> {
    let limit = lro_limit(&args.options);
    let group_path = arm.group_path(&names.group);

    // 1. Resource group.
    match arm
        .get::<ArmResource>(&group_path, API_RESOURCES)
        .await
        .context("reading the resource group")?
    {
        Some(existing) if existing.tag(DEPLOYMENT_TAG) == Some(names.deployment.as_str()) => {
            step(format!(
                "resource group {} exists (made by an earlier deploy of {}): using it, a failure \
                 now will not delete it",
                names.group, names.deployment
            ));
        }
        Some(_) => step(format!(
            "using the existing resource group {} (not made by cvm-cli: it is never deleted)",
            names.group
        )),
        None => {
            step(format!("creating resource group {}", names.group));
            arm.put(
                &group_path,
                API_RESOURCES,
                &body::Tracked::<body::Empty> {
                    properties: None,
                    ..with(region, &names.deployment, None, body::Empty {})
                },
                limit,
            )
            .await?;
            created.push(Resource {
                kind: "resource group",
                id: group_path.clone(),
            });
        }
    }

    // Refuse to touch a VM or disk of the same name that is already there.
    let vm_path = provider_path(
        arm,
        &names.group,
        "Microsoft.Compute/virtualMachines",
        &names.vm,
    );
    let disk_path = provider_path(arm, &names.group, "Microsoft.Compute/disks", &names.disk);
    for (path, api, what) in [(&vm_path, API_VMS, "VM"), (&disk_path, API_DISKS, "disk")] {
        if arm.get::<ArmResource>(path, api).await?.is_some() {
            bail!(
                "{what} {path} already exists: pick another --vm-name, or remove the old \
                 deployment with {}",
                cleanup_command(names, &arm.subscription)
            );
        }
    }

    // 2. The disk, created for upload.
    let vhd_bytes = std::fs::metadata(vhd)?.len();
    step(format!(
        "creating managed disk {} for upload ({vhd_bytes} bytes)",
        names.disk
    ));
    arm.put(
        &disk_path,
        API_DISKS,
        &with(
            region,
            &names.deployment,
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
        ),
        limit,
    )
    .await?;
    created.push(Resource {
        kind: "disk",
        id: disk_path.clone(),
    });

    step("granting write access to the disk (SAS)");
    let body = arm
        .post(
            &format!("{disk_path}/beginGetAccess"),
            API_DISKS,
            &body::GrantAccess {
                access: "Write",
                duration_in_seconds: 86400,
            },
            limit,
        )
        .await?;
    let access: AccessUri = arm::parse(&body, "beginGetAccess result")?;
    let sas = access
        .access_sas
        .or_else(|| access.properties?.output?.access_sas)
        .context("beginGetAccess returned no accessSAS")?;
    let sas = reqwest::Url::parse(&sas).context("beginGetAccess returned a bad SAS URL")?;
    if sas.scheme() != "https" && !(arm.is_overridden() && sas.scheme() == "http") {
        bail!("beginGetAccess returned a SAS URL that is not https");
    }
    step(format!("uploading {} to the disk", vhd.display()));
    let uploaded = upload_pages(&sas, vhd, &args.options).await;
    step("revoking the disk's write access");
    let revoked = arm
        .post(
            &format!("{disk_path}/endGetAccess"),
            API_DISKS,
            &body::Empty {},
            limit,
        )
        .await;
    let upload = uploaded?;
    revoked?;
    step(format!(
        "uploaded {} of {} blocks of 4 MiB in {:.1} s",
        upload.blocks_uploaded, upload.blocks_total, upload.seconds
    ));

    // 3. Network.
    let nsg_path = provider_path(
        arm,
        &names.group,
        "Microsoft.Network/networkSecurityGroups",
        &names.nsg,
    );
    // An NSG rule takes the ranges of one address family: IPv4 and IPv6 get a rule each.
    let ingress = args.options.ingress()?;
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
    step(format!("creating network security group {}", names.nsg));
    arm.put(
        &nsg_path,
        API_NETWORK,
        &with(
            region,
            &names.deployment,
            None,
            body::Nsg {
                security_rules: rules,
            },
        ),
        limit,
    )
    .await?;
    created.push(Resource {
        kind: "network security group",
        id: nsg_path.clone(),
    });

    let ip_path = provider_path(
        arm,
        &names.group,
        "Microsoft.Network/publicIPAddresses",
        &names.ip,
    );
    step(format!("creating public IP {}", names.ip));
    arm.put(
        &ip_path,
        API_NETWORK,
        &with(
            region,
            &names.deployment,
            Some("Standard"),
            body::PublicIp {
                allocation_method: "Static",
                address_version: "IPv4",
            },
        ),
        limit,
    )
    .await?;
    created.push(Resource {
        kind: "public IP",
        id: ip_path.clone(),
    });

    let vnet_path = provider_path(
        arm,
        &names.group,
        "Microsoft.Network/virtualNetworks",
        &names.vnet,
    );
    step(format!("creating VNet {}", names.vnet));
    arm.put(
        &vnet_path,
        API_NETWORK,
        &with(
            region,
            &names.deployment,
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
        ),
        limit,
    )
    .await?;
    created.push(Resource {
        kind: "VNet",
        id: vnet_path.clone(),
    });

    let nic_path = provider_path(
        arm,
        &names.group,
        "Microsoft.Network/networkInterfaces",
        &names.nic,
    );
    step(format!("creating NIC {}", names.nic));
    arm.put(
        &nic_path,
        API_NETWORK,
        &with(
            region,
            &names.deployment,
            None,
            body::Nic {
                network_security_group: body::Id {
                    id: nsg_path.clone(),
                },
                ip_configurations: vec![body::Named {
                    name: "ipconfig1".to_owned(),
                    properties: body::IpConfiguration {
                        private_allocation_method: "Dynamic",
                        subnet: body::Id {
                            id: format!("{vnet_path}/subnets/default"),
                        },
                        public_ip_address: body::Id {
                            id: ip_path.clone(),
                        },
                    },
                }],
            },
        ),
        limit,
    )
    .await?;
    created.push(Resource {
        kind: "NIC",
        id: nic_path.clone(),
    });

    // 4. The VM.
    step(format!(
        "creating confidential VM {} ({})",
        names.vm, args.vm_type
    ));
    let vm_body = with(
        region,
        &names.deployment,
        None,
        body::Vm {
            hardware_profile: body::HardwareProfile {
                vm_size: args.vm_type.clone(),
            },
            storage_profile: body::StorageProfile {
                os_disk: body::OsDisk {
                    os_type: "Linux",
                    create_option: "Attach",
                    managed_disk: body::ManagedDisk {
                        id: disk_path.clone(),
                        security_profile: body::VmDiskSecurity {
                            security_encryption_type: "VMGuestStateOnly",
                        },
                    },
                },
            },
            network_profile: body::NetworkProfile {
                network_interfaces: vec![body::NicReference {
                    id: nic_path.clone(),
                    properties: body::NicReferenceProperties { primary: true },
                }],
            },
            security_profile: body::VmSecurity {
                security_type: "ConfidentialVM",
                uefi_settings: body::UefiSettings {
                    secure_boot_enabled: args.secure_boot.secure_boot,
                    v_tpm_enabled: true,
                },
            },
            user_data: user_data.to_owned(),
            diagnostics_profile: body::DiagnosticsProfile {
                boot_diagnostics: body::BootDiagnostics { enabled: true },
            },
        },
    );
    let vm_result = arm.put(&vm_path, API_VMS, &vm_body, limit).await;
    if vm_result.is_err() {
        // A failed VM creation may still have left the VM resource behind.
        if let Ok(Some(_)) = arm.get::<ArmResource>(&vm_path, API_VMS).await {
            created.push(Resource {
                kind: "VM",
                id: vm_path.clone(),
            });
        }
    }
    vm_result?;
    if !created.iter().any(|r| r.id == vm_path) {
        created.push(Resource {
            kind: "VM",
            id: vm_path.clone(),
        });
    }

    let started = Instant::now();
    let address = loop {
        let ip: Option<PublicIp> = arm.get(&ip_path, API_NETWORK).await?;
        let address = ip
            .and_then(|ip| ip.properties?.ip_address)
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok());
        if let Some(address) = address {
            break address;
        }
        if started.elapsed() > limit {
            bail!(
                "public IP {} has no address after {} s",
                names.ip,
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    Ok((address, upload))
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
        progress: !options.json && std::io::stderr().is_terminal(),
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
        let body = response.bytes().await.unwrap_or_default();
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
) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        check_deployment_name(name)?;
        let group = group
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}Rg"));
        check_group_name(&group)?;
        let arm = Arm::connect(subscription).await?;
        let limit = Duration::from_secs(1800);
        let mut tagged = arm.tagged_in_group(&group, DEPLOYMENT_TAG, name).await?;
        tagged.sort_by_key(|r| kind_of(&r.id).2);
        let mut failed = 0;
        for resource in &tagged {
            let (kind, api, order) = kind_of(&resource.id);
            if order == 6 {
                eprintln!("  skipped {} (not a type cvm-cli creates)", resource.id);
                continue;
            }
            if dry_run {
                println!("would delete {kind} {}", resource.id);
                continue;
            }
            match arm.delete(&resource.id, api, limit).await {
                Ok(()) => println!("deleted {kind} {}", resource.id),
                Err(error) => {
                    failed += 1;
                    eprintln!("could not delete {kind} {}: {error:#}", resource.id);
                }
            }
        }
        let group_path = arm.group_path(&group);
        match arm.get::<ArmResource>(&group_path, API_RESOURCES).await? {
            None => println!("resource group {group} does not exist"),
            Some(rg) if rg.tag(DEPLOYMENT_TAG) != Some(name) => {
                println!("kept resource group {group}: cvm-cli did not create it")
            }
            Some(_) => {
                let left = if dry_run {
                    Vec::new()
                } else {
                    arm.list_group(&group).await?
                };
                if !left.is_empty() {
                    println!(
                        "kept resource group {group}: it still holds {} resource(s) not made by \
                         this deployment",
                        left.len()
                    );
                } else if dry_run {
                    println!("would delete resource group {group}");
                } else {
                    match arm.delete(&group_path, API_RESOURCES, limit).await {
                        Ok(()) => println!("deleted resource group {group}"),
                        Err(error) => {
                            failed += 1;
                            eprintln!("could not delete resource group {group}: {error:#}");
                        }
                    }
                }
            }
        }
        if tagged.is_empty() {
            println!("no resources tagged {DEPLOYMENT_TAG}={name} in {group}");
        }
        if failed > 0 {
            bail!("{failed} deletion(s) failed");
        }
        token::forget("azure", name, !tagged.is_empty(), dry_run)
    })
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
            assert_eq!(tee_of(snp).unwrap(), "AMD SEV-SNP", "{snp}");
        }
        for tdx in [
            "Standard_DC2es_v5",
            "Standard_DC2eds_v5",
            "Standard_DC4es_v6",
            "Standard_EC16eds_v5",
        ] {
            assert_eq!(tee_of(tdx).unwrap(), "Intel TDX", "{tdx}");
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
    fn a_vhd_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let file = std::fs::File::create(&raw).unwrap();
        file.set_len(3 * MIB).unwrap();
        file.write_all_at(b"hello", MIB).unwrap();
        let vhd = vhd_for(&raw).unwrap();
        assert_eq!(vhd, dir.path().join("disk.vhd"));
        assert_eq!(std::fs::metadata(&vhd).unwrap().len(), 3 * MIB + 512);
        check_vhd(&vhd, 3 * MIB).unwrap();
        let modified = std::fs::metadata(&vhd).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vhd_for(&raw).unwrap(), vhd);
        assert_eq!(
            std::fs::metadata(&vhd).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(vhd_for(&vhd).unwrap(), vhd);

        file.set_len(3 * MIB + 1).unwrap();
        assert!(vhd_for(&raw)
            .unwrap_err()
            .to_string()
            .contains("whole number of MiB"));
    }
}

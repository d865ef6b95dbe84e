//! `cvm-cli deploy-aws`: the raw disk goes straight into an EBS snapshot through the EBS direct
//! APIs (no S3 bucket, no vmimport role, no VMDK conversion), then an AMI (UEFI, TPM 2.0, ENA),
//! a security group and an SEV-SNP instance (`CpuOptions.AmdSevSnp=enabled`) whose `UserData`
//! carries the agent's new API token (the `cvm_attestation::provision::UserData` document).
//! Secure Boot stays off: the AMI is registered without `UefiData`, so the instance's UEFI
//! variable store has no keys enrolled (the default image is unsigned).
//!
//! Everything created carries the tag `cvm-cli-deployment=<name>`; `cvm-cli cleanup --aws <name>`
//! deletes exactly those resources.

use super::blocks::{self, Block, UploadSettings, UploadStats};
use super::ec2::{Ec2, Params};
use super::plan::{
    delete_found, report_kept, update_command, verify_command, Deployed, Plan, Resource,
    SecureBootPlan, TokenPlan,
};
use super::token::{self, DeployToken};
use super::{check_deployment_name, step, DeployOptions, DEPLOYMENT_TAG};
use anyhow::{bail, Context, Result};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAlgorithm, Tag};
use base64::Engine;
use clap::Args;
use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// EBS direct APIs move 512 KiB blocks.
const EBS_BLOCK_BYTES: u64 = 512 * 1024;
const GIB: u64 = 1 << 30;

/// Instance families that offer SEV-SNP, and the regions where they do.
const SNP_FAMILIES: [&str; 3] = ["m6a", "c6a", "r6a"];
const SNP_REGIONS: [&str; 2] = ["us-east-2", "eu-west-1"];

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials, region and endpoint come from the standard AWS \
    configuration (environment, ~/.aws, SSO/instance roles); AWS_ENDPOINT_URL points it at an \
    emulator.\n\nExample:\n  cvm-cli deploy-aws --image out/tiny-agent/disk.raw --vm_name demo \
    --additional_ports 443 --allow-from 203.0.113.7/32\n  cvm-cli cleanup --aws demo --region us-east-2"
)]
pub struct DeployAwsArgs {
    /// Name of the deployment: the instance's Name tag and the prefix of every resource.
    #[arg(long, visible_alias = "vm_name", default_value = "cvm-test")]
    pub vm_name: String,
    /// AWS region (SEV-SNP instances exist in us-east-2 and eu-west-1).
    #[arg(long, default_value = "us-east-2")]
    pub region: String,
    /// Instance type: an SEV-SNP capable m6a, c6a or r6a size.
    #[arg(long, visible_alias = "vm_type", default_value = "m6a.large")]
    pub vm_type: String,
    /// Accepted for compatibility and ignored: the disk goes straight into an EBS snapshot, no
    /// bucket is needed.
    #[arg(long)]
    pub bucket: Option<String>,
    #[command(flatten)]
    pub options: DeployOptions,
}

/// How the agent's token reaches it on AWS.
const TOKEN_VIA: &str =
    "the instance's user data (RunInstances UserData, base64; IMDSv2 user-data)";

pub fn run(args: DeployAwsArgs) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(deploy(args))
}

/// Refuses instance types and regions without SEV-SNP before anything is created.
fn check_snp_offer(vm_type: &str, region: &str) -> Result<()> {
    let family = vm_type.split('.').next().unwrap_or_default();
    if !SNP_FAMILIES.contains(&family) || !vm_type.contains('.') {
        bail!(
            "instance type {vm_type:?} has no AMD SEV-SNP: use a {} size (e.g. m6a.large)",
            SNP_FAMILIES.join(", ")
        );
    }
    if !SNP_REGIONS.contains(&region) {
        bail!(
            "region {region:?} offers no SEV-SNP instances: use {}",
            SNP_REGIONS.join(" or ")
        );
    }
    Ok(())
}

/// The AWS configuration chain with rustls on ring (no aws-lc build).
async fn aws_config(region: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .http_client(http)
        .load()
        .await
}

/// Fails early, with the remedy, when no credentials can be found.
async fn check_credentials(config: &aws_config::SdkConfig) -> Result<()> {
    use aws_credential_types::provider::ProvideCredentials;
    let provider = config
        .credentials_provider()
        .context("no AWS credentials provider")?;
    provider.provide_credentials().await.map_err(|error| {
        anyhow::anyhow!(
            "no AWS credentials ({error}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, or run `aws configure` / `aws sso login`"
        )
    })?;
    Ok(())
}

async fn deploy(args: DeployAwsArgs) -> Result<()> {
    check_deployment_name(&args.vm_name)?;
    let ingress = args.options.ingress()?;
    check_snp_offer(&args.vm_type, &args.region)?;
    let image = args.options.image()?;
    let image_bytes = std::fs::metadata(&image)?.len();
    let name = &args.vm_name;
    let plan = Plan {
        cloud: "aws",
        deployment: name.clone(),
        region: args.region.clone(),
        vm_type: args.vm_type.clone(),
        tee: "AMD SEV-SNP",
        image: image.clone(),
        image_bytes,
        ports: ingress.ports.clone(),
        allow_from: ingress.all(),
        warnings: ingress.warnings(false),
        api_token: TokenPlan {
            file: token::token_path("aws", name)?,
            passed_via: TOKEN_VIA.into(),
        },
        secure_boot: SecureBootPlan {
            enabled: false,
            note: "off (image unsigned: the AMI gets no UefiData, so no keys are enrolled; PCR 7 \
                   records it; the golden's PCR set decides)"
                .into(),
        },
        steps: vec![
            format!(
                "EBS snapshot of {} GiB: upload the non-zero 512 KiB blocks, {} in parallel",
                image_bytes.div_ceil(GIB),
                args.options.parallel
            ),
            format!(
                "AMI {name}-<time> from the snapshot (boot mode uefi, NitroTPM 2.0, ENA, no \
                 UefiData: Secure Boot off)"
            ),
            format!("security group {name}-cvm: {}", ingress.describe()),
            format!(
                "instance {name} ({}, AmdSevSnp=enabled, the API token in UserData), wait for its \
                 public IP",
                args.vm_type
            ),
        ],
    };
    plan.print(args.options.json);
    if args.options.dry_run {
        return Ok(());
    }
    if args.bucket.is_some() {
        step("--bucket is not needed: the disk is uploaded straight into an EBS snapshot");
    }

    let config = aws_config(&args.region).await;
    check_credentials(&config).await?;
    let ec2 = Ec2::new(&config)?;
    let ebs = aws_sdk_ebs::Client::new(&config);
    let mut token = DeployToken::create("aws", name, &cleanup_command(name, &args.region))?;
    let user_data = token.user_data_base64()?;
    let mut created = Vec::new();
    match create_everything(&args, &image, &ec2, &ebs, &user_data, &mut created).await {
        Ok((address, upload)) => {
            token.keep();
            Deployed {
                cloud: "aws",
                deployment: name.clone(),
                region: args.region.clone(),
                vm_type: args.vm_type.clone(),
                verify_command: verify_command(&address),
                update_command: update_command(&address, &token.path),
                api_token_file: token.path.clone(),
                cleanup_command: cleanup_command(name, &args.region),
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
            if args.options.keep_on_failure {
                report_kept(&created, &cleanup_command(name, &args.region));
                token.after_failure(created.iter().any(|r| r.kind == "instance"));
            } else {
                eprintln!("deploy failed; deleting what it created:");
                delete_all(&ec2, &created, args.options.wait_seconds).await;
                token.after_failure(false);
            }
            Err(error)
        }
    }
}

/// The deploy's steps; each created resource is recorded in `created` as soon as it exists.
async fn create_everything(
    args: &DeployAwsArgs,
    image: &std::path::Path,
    ec2: &Ec2,
    ebs: &aws_sdk_ebs::Client,
    user_data: &str,
    created: &mut Vec<Resource>,
) -> Result<(String, UploadStats)> {
    let name = &args.vm_name;
    let tags = [("Name", name.as_str()), (DEPLOYMENT_TAG, name.as_str())];
    let wait = Duration::from_secs(args.options.wait_seconds);

    let (snapshot, upload) = upload_snapshot(args, image, ebs, created).await?;
    step(format!("waiting for snapshot {snapshot} to complete"));
    wait_until(wait, "snapshot to complete", || async {
        let answer = ec2
            .call(
                "DescribeSnapshots",
                &Params::default().set("SnapshotId.1", &snapshot).0,
            )
            .await?;
        match answer.first("status").as_deref() {
            Some("completed") => Ok(Some(())),
            Some("error") => bail!("snapshot {snapshot} failed"),
            _ => Ok(None),
        }
    })
    .await?;

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    // No UefiData: the instance's UEFI variable store starts without Secure Boot keys, so
    // Secure Boot is off (the default image is unsigned; docs/deploy.md has the signed path).
    step("registering the AMI (UEFI, TPM 2.0, ENA; Secure Boot off)");
    let answer = ec2
        .call(
            "RegisterImage",
            &Params::default()
                .set("Name", format!("{name}-{stamp}"))
                .set("Description", format!("cvm-cli deployment {name}"))
                .set("Architecture", "x86_64")
                .set("VirtualizationType", "hvm")
                .set("RootDeviceName", "/dev/xvda")
                .set("BlockDeviceMapping.1.DeviceName", "/dev/xvda")
                .set("BlockDeviceMapping.1.Ebs.SnapshotId", &snapshot)
                .set("BlockDeviceMapping.1.Ebs.VolumeType", "gp3")
                .set("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true")
                .set("EnaSupport", "true")
                .set("BootMode", "uefi")
                .set("TpmSupport", "v2.0")
                .set("ImdsSupport", "v2.0")
                .tags(1, "image", &tags)
                .0,
        )
        .await?;
    let ami = answer
        .first("imageId")
        .context("RegisterImage: no imageId")?;
    created.push(Resource {
        kind: "image",
        id: ami.clone(),
    });
    // Tagged again explicitly: not every EC2 implementation applies RegisterImage's
    // TagSpecification (moto does not), and cleanup finds the AMI by this tag.
    let mut tagging = Params::default().set("ResourceId.1", &ami);
    for (n, (key, value)) in tags.iter().enumerate() {
        tagging = tagging
            .set(format!("Tag.{}.Key", n + 1), *key)
            .set(format!("Tag.{}.Value", n + 1), *value);
    }
    ec2.call("CreateTags", &tagging.0).await?;

    step(format!("creating security group {name}-cvm"));
    let answer = ec2
        .call(
            "CreateSecurityGroup",
            &Params::default()
                .set("GroupName", format!("{name}-cvm"))
                .set(
                    "GroupDescription",
                    format!("cvm-cli deployment {name}: agent and workload ports"),
                )
                .tags(1, "security-group", &tags)
                .0,
        )
        .await?;
    let group = answer
        .first("groupId")
        .context("CreateSecurityGroup: no groupId")?;
    created.push(Resource {
        kind: "security-group",
        id: group.clone(),
    });
    let mut ingress = Params::default().set("GroupId", &group);
    let allowed = args.options.ingress()?;
    let [(_, ipv4), (_, ipv6)] = allowed.by_family();
    for (n, port) in allowed.ports.iter().enumerate() {
        let p = format!("IpPermissions.{}", n + 1);
        ingress = ingress
            .set(format!("{p}.IpProtocol"), "tcp")
            .set(format!("{p}.FromPort"), port.to_string())
            .set(format!("{p}.ToPort"), port.to_string());
        for (m, cidr) in ipv4.iter().enumerate() {
            ingress = ingress.set(format!("{p}.IpRanges.{}.CidrIp", m + 1), cidr);
        }
        for (m, cidr) in ipv6.iter().enumerate() {
            ingress = ingress.set(format!("{p}.Ipv6Ranges.{}.CidrIpv6", m + 1), cidr);
        }
    }
    ec2.call("AuthorizeSecurityGroupIngress", &ingress.0)
        .await?;

    step(format!("launching {name} ({}, SEV-SNP)", args.vm_type));
    let answer = ec2
        .call(
            "RunInstances",
            &Params::default()
                .set("ImageId", &ami)
                .set("InstanceType", &args.vm_type)
                .set("MinCount", "1")
                .set("MaxCount", "1")
                .set("SecurityGroupId.1", &group)
                .set("CpuOptions.AmdSevSnp", "enabled")
                .set("MetadataOptions.HttpTokens", "required")
                .set("UserData", user_data)
                .set("ClientToken", format!("{name}-{stamp}"))
                .tags(1, "instance", &tags)
                .tags(2, "volume", &tags)
                .0,
        )
        .await?;
    let instance = answer
        .first("instanceId")
        .context("RunInstances: no instanceId")?;
    created.push(Resource {
        kind: "instance",
        id: instance.clone(),
    });

    step(format!("waiting for {instance} to run with a public IP"));
    let address = wait_until(wait, "instance to run with a public IP", || {
        let instance = &instance;
        async move {
            let answer = ec2
                .call(
                    "DescribeInstances",
                    &Params::default().set("InstanceId.1", instance).0,
                )
                .await?;
            let state = answer.first("name").unwrap_or_default();
            if matches!(state.as_str(), "terminated" | "shutting-down" | "stopped") {
                let reason = answer.first("message").unwrap_or_default();
                bail!("instance {instance} is {state}: {reason}");
            }
            Ok(answer.first("ipAddress").filter(|_| state == "running"))
        }
    })
    .await?;
    Ok((address, upload))
}

/// StartSnapshot, parallel PutSnapshotBlock of the non-zero blocks, CompleteSnapshot.
async fn upload_snapshot(
    args: &DeployAwsArgs,
    image: &std::path::Path,
    ebs: &aws_sdk_ebs::Client,
    created: &mut Vec<Resource>,
) -> Result<(String, UploadStats)> {
    let name = &args.vm_name;
    let size = std::fs::metadata(image)?.len();
    let tag = |key: &str| Tag::builder().key(key).value(name).build();
    let started = ebs
        .start_snapshot()
        .volume_size(size.div_ceil(GIB) as i64)
        .description(format!("cvm-cli deployment {name}"))
        .tags(tag("Name"))
        .tags(tag(DEPLOYMENT_TAG))
        .timeout(60)
        .send()
        .await
        .map_err(|error| anyhow::anyhow!("EBS StartSnapshot: {}", error_text(&error)))?;
    let snapshot = started
        .snapshot_id()
        .context("StartSnapshot: no snapshot ID")?
        .to_owned();
    created.push(Resource {
        kind: "snapshot",
        id: snapshot.clone(),
    });
    step(format!(
        "uploading {} into snapshot {snapshot}",
        image.display()
    ));
    let settings = UploadSettings {
        block_bytes: EBS_BLOCK_BYTES,
        parallel: usize::from(args.options.parallel),
        progress: !args.options.json && std::io::stderr().is_terminal(),
        attempts: 4,
    };
    let stats = blocks::upload(image, &settings, |block: Block| {
        let snapshot = &snapshot;
        async move {
            let index = i32::try_from(block.index).context("image too large for EBS")?;
            let checksum =
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&block.data));
            ebs.put_snapshot_block()
                .snapshot_id(snapshot)
                .block_index(index)
                .data_length(EBS_BLOCK_BYTES as i32)
                .checksum(checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .block_data(ByteStream::from(block.data))
                .send()
                .await
                .map_err(|error| anyhow::anyhow!("EBS PutSnapshotBlock: {}", error_text(&error)))?;
            Ok(())
        }
    })
    .await?;
    ebs.complete_snapshot()
        .snapshot_id(&snapshot)
        .changed_blocks_count(i32::try_from(stats.blocks_uploaded)?)
        .send()
        .await
        .map_err(|error| anyhow::anyhow!("EBS CompleteSnapshot: {}", error_text(&error)))?;
    step(format!(
        "uploaded {} of {} blocks ({} MiB) in {:.1} s; zero blocks skipped",
        stats.blocks_uploaded,
        stats.blocks_total,
        stats.bytes_uploaded >> 20,
        stats.seconds
    ));
    Ok((snapshot, stats))
}

/// An SDK error with its service message (the default Display says only "service error").
fn error_text<E: std::error::Error + 'static>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Polls `check` every 2 s until it yields a value, fails, or `limit` passes.
async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for the {what}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Deletes resources newest first (an instance before its security group), reporting each.
async fn delete_all(ec2: &Ec2, resources: &[Resource], wait_seconds: u64) {
    for resource in resources.iter().rev() {
        match delete(ec2, resource, wait_seconds).await {
            Ok(()) => eprintln!("  deleted {} {}", resource.kind, resource.id),
            Err(error) => eprintln!(
                "  could not delete {} {}: {error:#} (delete it yourself)",
                resource.kind, resource.id
            ),
        }
    }
}

async fn delete(ec2: &Ec2, resource: &Resource, wait_seconds: u64) -> Result<()> {
    let id = &resource.id;
    match resource.kind {
        "instance" => {
            ec2.call(
                "TerminateInstances",
                &Params::default().set("InstanceId.1", id).0,
            )
            .await?;
            // The security group stays in use until the instance is gone.
            wait_until(
                Duration::from_secs(wait_seconds),
                "instance to terminate",
                || async {
                    let answer = ec2
                        .call(
                            "DescribeInstances",
                            &Params::default().set("InstanceId.1", id).0,
                        )
                        .await?;
                    Ok((answer.first("name").as_deref() == Some("terminated")).then_some(()))
                },
            )
            .await
        }
        "security-group" => ec2
            .call(
                "DeleteSecurityGroup",
                &Params::default().set("GroupId", id).0,
            )
            .await
            .map(drop),
        "image" => ec2
            .call("DeregisterImage", &Params::default().set("ImageId", id).0)
            .await
            .map(drop),
        "snapshot" => ec2
            .call("DeleteSnapshot", &Params::default().set("SnapshotId", id).0)
            .await
            .map(drop),
        other => bail!("unknown resource kind {other}"),
    }
}

fn cleanup_command(name: &str, region: &str) -> String {
    format!("cvm-cli cleanup --aws {name} --region {region}")
}

/// `cvm-cli cleanup --aws NAME`: finds the deployment's resources by tag and deletes them.
pub fn cleanup(name: &str, region: &str, dry_run: bool) -> Result<()> {
    check_deployment_name(name)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let config = aws_config(region).await;
        check_credentials(&config).await?;
        let ec2 = Ec2::new(&config)?;
        let resources = tagged_resources(&ec2, name).await?;
        let what = format!("tagged {DEPLOYMENT_TAG}={name} in {region}");
        let ec2 = &ec2;
        delete_found(&resources, &what, dry_run, |resource| async move {
            delete(ec2, &resource, 600).await
        })
        .await?;
        token::forget("aws", name, !resources.is_empty(), dry_run)
    })
}

/// The deployment's resources in creation order: snapshot, image, security group, instance.
async fn tagged_resources(ec2: &Ec2, name: &str) -> Result<Vec<Resource>> {
    let filter = || Params::default().tag_filter(1, DEPLOYMENT_TAG, name);
    let mut resources = Vec::new();
    let snapshots = ec2
        .call("DescribeSnapshots", &filter().set("Owner.1", "self").0)
        .await?;
    for id in snapshots.items("snapshotSet", "snapshotId") {
        resources.push(Resource {
            kind: "snapshot",
            id,
        });
    }
    let images = ec2
        .call("DescribeImages", &filter().set("Owner.1", "self").0)
        .await?;
    for id in images.items("imagesSet", "imageId") {
        resources.push(Resource { kind: "image", id });
    }
    let groups = ec2.call("DescribeSecurityGroups", &filter().0).await?;
    for id in groups.items("securityGroupInfo", "groupId") {
        resources.push(Resource {
            kind: "security-group",
            id,
        });
    }
    let instances = ec2
        .call(
            "DescribeInstances",
            &filter()
                .set("Filter.2.Name", "instance-state-name")
                .set("Filter.2.Value.1", "pending")
                .set("Filter.2.Value.2", "running")
                .set("Filter.2.Value.3", "stopping")
                .set("Filter.2.Value.4", "stopped")
                .0,
        )
        .await?;
    for id in instances.items("instancesSet", "instanceId") {
        resources.push(Resource {
            kind: "instance",
            id,
        });
    }
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snp_types_and_regions_pass() {
        assert!(check_snp_offer("m6a.large", "us-east-2").is_ok());
        assert!(check_snp_offer("r6a.4xlarge", "eu-west-1").is_ok());
        let text = check_snp_offer("t3.micro", "us-east-2")
            .unwrap_err()
            .to_string();
        assert!(text.contains("no AMD SEV-SNP"), "{text}");
        let text = check_snp_offer("m6a.large", "us-west-1")
            .unwrap_err()
            .to_string();
        assert!(text.contains("us-east-2 or eu-west-1"), "{text}");
        assert!(check_snp_offer("m6a", "us-east-2").is_err());
    }
}

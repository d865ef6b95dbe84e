//! `cvm-cli deploy-aws` and `cleanup --aws` against the moto emulator through the real SDK
//! (EBS direct APIs) and SigV4-signed EC2 calls: the snapshot must hold exactly the image, the
//! EC2 calls must ask for UEFI + TPM 2.0 + SEV-SNP (moto records them; it ignores those
//! parameters itself), and failures must undo what was created.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use test_support::Moto;

const BLOCK: u64 = 512 * 1024;

/// A sparse image: data in blocks 0 and 3, a block of written zeros (6), and a short tail that
/// ends in data (block 9). Blocks 0, 3 and 9 must travel; nothing else.
fn sample_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let size = 9 * BLOCK + 1000;
    let mut content = vec![0u8; size as usize];
    for (i, byte) in content[..4096].iter_mut().enumerate() {
        *byte = (i % 251) as u8 + 1;
    }
    content[(3 * BLOCK + 12345) as usize] = 0xaa;
    content[size as usize - 1] = 0x55;
    let path = dir.join("disk.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(&content[..4096], 0).unwrap();
    file.write_all_at(&content[3 * BLOCK as usize..][..BLOCK as usize], 3 * BLOCK)
        .unwrap();
    file.write_all_at(&vec![0u8; BLOCK as usize], 6 * BLOCK)
        .unwrap();
    file.write_all_at(&content[9 * BLOCK as usize..], 9 * BLOCK)
        .unwrap();
    (path, content)
}

/// `cvm-cli` with moto as every AWS endpoint and nothing from the user's AWS configuration.
fn cli(moto: &Moto, args: &[&str]) -> Output {
    aws_command(moto).args(args).output().expect("cvm-cli runs")
}

fn aws_command(moto: &Moto) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
    command
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads the snapshot back through the EBS direct APIs: block index -> bytes.
async fn snapshot_blocks(moto: &Moto, snapshot: &str) -> BTreeMap<i32, Vec<u8>> {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-2"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let ebs = aws_sdk_ebs::Client::new(&config);
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(snapshot)
        .send()
        .await
        .expect("ListSnapshotBlocks");
    let mut blocks = BTreeMap::new();
    for block in listed.blocks() {
        let index = block.block_index().unwrap();
        let data = ebs
            .get_snapshot_block()
            .snapshot_id(snapshot)
            .block_index(index)
            .block_token(block.block_token().unwrap())
            .send()
            .await
            .expect("GetSnapshotBlock")
            .block_data
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec();
        blocks.insert(index, data);
    }
    blocks
}

fn resource(deployed: &serde_json::Value, kind: &str) -> String {
    deployed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|resource| resource["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {deployed}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_uploads_only_data_blocks_and_launches_a_tagged_snp_vm() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (image, content) = sample_image(dir.path());

    let output = cli(
        &moto,
        &[
            "deploy-aws",
            "--image",
            image.to_str().unwrap(),
            "--vm_name",
            "cvm-e2e",
            "--additional_ports",
            "443,80",
            "--json",
            "--wait-seconds",
            "30",
        ],
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        moto.log_tail()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let plan: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(plan["plan"]["ports"], serde_json::json!([8000, 443, 80]));
    let deployed: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let deployed = &deployed["deployed"];
    assert_eq!(deployed["upload"]["blocks_total"], 10);
    assert_eq!(deployed["upload"]["blocks_uploaded"], 3);
    let address = deployed["address"].as_str().unwrap();
    assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "{address}");
    assert!(deployed["verify_command"]
        .as_str()
        .unwrap()
        .contains(&format!("--host {address}:8000")));

    // The snapshot holds exactly the image's data blocks, zero-padded at the end.
    let snapshot = resource(deployed, "snapshot");
    let blocks = snapshot_blocks(&moto, &snapshot).await;
    assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), vec![0, 3, 9]);
    let mut rebuilt = vec![0u8; 10 * BLOCK as usize];
    for (index, data) in &blocks {
        assert_eq!(data.len() as u64, BLOCK);
        rebuilt[*index as usize * BLOCK as usize..][..BLOCK as usize].copy_from_slice(data);
    }
    assert_eq!(&rebuilt[..content.len()], &content[..]);

    // What EC2 was asked for (moto ignores these parameters, so check the requests).
    let register = &moto.ec2_calls("RegisterImage").unwrap()[0];
    for (key, value) in [
        ("BootMode", "uefi"),
        ("TpmSupport", "v2.0"),
        ("EnaSupport", "true"),
        ("Architecture", "x86_64"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot.as_str()),
    ] {
        assert_eq!(register.get(key).map(String::as_str), Some(value), "{key}");
    }
    let run = &moto.ec2_calls("RunInstances").unwrap()[0];
    assert_eq!(run["CpuOptions.AmdSevSnp"], "enabled");
    assert_eq!(run["InstanceType"], "m6a.large");
    assert_eq!(run["ImageId"], resource(deployed, "image"));
    let ingress = &moto.ec2_calls("AuthorizeSecurityGroupIngress").unwrap()[0];
    let ports: Vec<&str> = (1..=3)
        .map(|n| ingress[&format!("IpPermissions.{n}.FromPort")].as_str())
        .collect();
    assert_eq!(ports, ["8000", "443", "80"]);

    // Cleanup deletes exactly this deployment's resources, and then finds nothing.
    let other = cli(
        &moto,
        &["cleanup", "--aws", "someone-else", "--region", "us-east-2"],
    );
    assert!(text(&other).contains("nothing tagged"), "{}", text(&other));
    let cleanup = cli(&moto, &["cleanup", "--aws", "cvm-e2e"]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    let report = text(&cleanup);
    for kind in ["instance", "security-group", "image", "snapshot"] {
        let id = resource(deployed, kind);
        assert!(report.contains(&format!("deleted {kind} {id}")), "{report}");
    }
    let again = cli(&moto, &["cleanup", "--aws", "cvm-e2e"]);
    assert!(text(&again).contains("nothing tagged"), "{}", text(&again));
}

#[test]
fn dry_runs_and_refusals_create_nothing() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = sample_image(dir.path());
    let image = image.to_str().unwrap();

    let dry = cli(
        &moto,
        &["deploy-aws", "--image", image, "--dry_run", "--json"],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["plan"]["tee"], "AMD SEV-SNP");
    assert_eq!(plan["plan"]["region"], "us-east-2");

    let wrong_type = cli(
        &moto,
        &["deploy-aws", "--image", image, "--vm_type", "t3.micro"],
    );
    assert_eq!(wrong_type.status.code(), Some(2));
    assert!(
        text(&wrong_type).contains("has no AMD SEV-SNP"),
        "{}",
        text(&wrong_type)
    );

    let wrong_region = cli(
        &moto,
        &["deploy-aws", "--image", image, "--region", "ap-south-1"],
    );
    assert_eq!(wrong_region.status.code(), Some(2));
    assert!(
        text(&wrong_region).contains("offers no SEV-SNP"),
        "{}",
        text(&wrong_region)
    );

    let no_credentials = aws_command(&moto)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["deploy-aws", "--image", image])
        .output()
        .unwrap();
    assert_eq!(no_credentials.status.code(), Some(2));
    assert!(
        text(&no_credentials).contains("no AWS credentials"),
        "{}",
        text(&no_credentials)
    );

    assert!(
        moto.recording().unwrap().is_empty(),
        "requests were sent: {:?}",
        moto.recording().unwrap()
    );
}

#[test]
fn a_failing_step_deletes_what_the_deploy_created() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = sample_image(dir.path());
    // Someone else's security group with the name the deploy wants: CreateSecurityGroup fails
    // after the snapshot and the AMI exist.
    let taken = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            // moto takes the region from the credential scope.
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-2/ec2/aws4_request, SignedHeaders=host, Signature=0",
            &format!("{}/", moto.endpoint()),
            "-d",
            "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=clash-cvm&GroupDescription=theirs",
        ])
        .output()
        .unwrap();
    assert!(taken.status.success(), "{}", text(&taken));

    let output = cli(
        &moto,
        &[
            "deploy-aws",
            "--image",
            image.to_str().unwrap(),
            "--vm-name",
            "clash",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let report = text(&output);
    assert!(report.contains("CreateSecurityGroup"), "{report}");
    assert!(report.contains("deleting what it created"), "{report}");
    assert!(report.contains("deleted image ami-"), "{report}");
    assert!(report.contains("deleted snapshot snap-"), "{report}");

    let leftovers = cli(&moto, &["cleanup", "--aws", "clash", "--dry-run"]);
    assert!(
        text(&leftovers).contains("nothing tagged"),
        "{}",
        text(&leftovers)
    );
    // The other party's group is untouched.
    assert!(moto.ec2_calls("DeleteSecurityGroup").unwrap().is_empty());
}

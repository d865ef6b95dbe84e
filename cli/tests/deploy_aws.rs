//! `cvm-cli deploy-aws` and `cleanup --aws` against the moto emulator through the real SDK
//! (EBS direct APIs) and SigV4-signed EC2 calls: the snapshot must hold exactly the image, the
//! EC2 calls must ask for UEFI + TPM 2.0 + SEV-SNP (moto records them; it ignores those
//! parameters itself), the instance's user data must carry the token kept in the deployment's
//! 0600 token file, and failures must undo what was created (the token file included).

mod common;

use base64::Engine;
use cvm_attestation::provision::UserData;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use test_support::Moto;

const BLOCK: u64 = 512 * 1024;
/// Who may connect in these tests: a documentation range (RFC 5737).
const ALLOW: &str = "198.51.100.0/24";

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

/// `cvm-cli` with moto as every AWS endpoint, nothing from the user's AWS configuration, and
/// its state (the deployments' token files) under `state`.
/// `cvm-cli deploy-aws --allow-from ALLOW --image IMAGE ARGS...`.
fn deploy(moto: &Moto, state: &Path, image: &Path, args: &[&str]) -> Output {
    let mut all = vec!["deploy-aws", "--allow-from", ALLOW, "--image"];
    all.push(image.to_str().unwrap());
    all.extend_from_slice(args);
    cli(moto, state, &all)
}

fn cli(moto: &Moto, state: &Path, args: &[&str]) -> Output {
    aws_command(moto, state)
        .args(args)
        .output()
        .expect("cvm-cli runs")
}

fn aws_command(moto: &Moto, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
    command
        .env("XDG_STATE_HOME", state)
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

/// The token a RunInstances call handed the instance, checked against the deployment's token
/// file: the same token, the file private to its owner.
fn token_in_user_data(run: &BTreeMap<String, String>, token_file: &Path) -> String {
    let document = base64::engine::general_purpose::STANDARD
        .decode(&run["UserData"])
        .expect("UserData is base64");
    let token = UserData::parse(&document)
        .expect("UserData is the agent's document")
        .cvm_api_token;
    assert_eq!(std::fs::read_to_string(token_file).unwrap(), token);
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    let mode = std::fs::metadata(token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());
    token
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
    let state = dir.path().join("state");
    let (image, content) = sample_image(dir.path());

    let output = deploy(
        &moto,
        &state,
        &image,
        &[
            "--vm_name",
            "cvm-e2e",
            "--additional_ports",
            "443,80",
            "--allow-from",
            "2001:db8::/32",
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
    assert_eq!(plan["plan"]["secure_boot"]["enabled"], false);
    assert!(plan["plan"]["secure_boot"]["note"]
        .as_str()
        .unwrap()
        .starts_with("off (image unsigned"));
    assert!(plan["plan"]["api_token"]["passed_via"]
        .as_str()
        .unwrap()
        .contains("RunInstances UserData"));
    let token_file = state.join("cvm-cli/aws/cvm-e2e/api-token");
    assert_eq!(
        plan["plan"]["api_token"]["file"],
        token_file.to_str().unwrap()
    );
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
    // Secure Boot stays off: no UEFI variable store with keys is registered.
    assert!(!register.contains_key("UefiData"), "{register:?}");
    let run = &moto.ec2_calls("RunInstances").unwrap()[0];
    assert_eq!(run["CpuOptions.AmdSevSnp"], "enabled");
    // The agent's token: in the instance's user data, and kept here in a 0600 file.
    assert_eq!(deployed["api_token_file"], token_file.to_str().unwrap());
    let token = token_in_user_data(run, &token_file);
    assert!(deployed["update_command"]
        .as_str()
        .unwrap()
        .contains(&format!("--token-file {}", token_file.display())));
    assert_eq!(run["InstanceType"], "m6a.large");
    assert_eq!(run["ImageId"], resource(deployed, "image"));
    let ingress = &moto.ec2_calls("AuthorizeSecurityGroupIngress").unwrap()[0];
    let ports: Vec<&str> = (1..=3)
        .map(|n| ingress[&format!("IpPermissions.{n}.FromPort")].as_str())
        .collect();
    assert_eq!(ports, ["8000", "443", "80"]);
    // Every port admits exactly the --allow-from ranges, and nothing else.
    assert_eq!(
        plan["plan"]["allow_from"],
        serde_json::json!([ALLOW, "2001:db8::/32"])
    );
    assert_eq!(plan["plan"]["warnings"], serde_json::json!([]));
    for n in 1..=3 {
        let p = format!("IpPermissions.{n}");
        let mut ranges: Vec<(&str, &str)> = ingress
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{p}.")) && key.contains("Ranges."))
            .map(|(key, value)| (&key[p.len() + 1..], value.as_str()))
            .collect();
        ranges.sort();
        assert_eq!(
            ranges,
            [
                ("IpRanges.1.CidrIp", ALLOW),
                ("Ipv6Ranges.1.CidrIpv6", "2001:db8::/32")
            ],
            "{ingress:?}"
        );
    }

    // A second deploy under the same name is refused while the token file exists: the file is
    // never overwritten, and nothing is created.
    let calls = moto.recording().unwrap().len();
    let refused = deploy(&moto, &state, &image, &["--vm_name", "cvm-e2e"]);
    assert_eq!(refused.status.code(), Some(2));
    let said = text(&refused);
    assert!(
        said.contains(&format!("{} already exists", token_file.display()))
            && said.contains("never overwritten")
            && said.contains("cvm-cli cleanup --aws cvm-e2e"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    assert_eq!(moto.recording().unwrap().len(), calls, "nothing was sent");

    // Cleanup deletes exactly this deployment's resources and its token file, and then finds
    // nothing.
    let other = cli(
        &moto,
        &state,
        &["cleanup", "--aws", "someone-else", "--region", "us-east-2"],
    );
    assert!(text(&other).contains("nothing tagged"), "{}", text(&other));
    let cleanup = cli(&moto, &state, &["cleanup", "--aws", "cvm-e2e"]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    let report = text(&cleanup);
    for kind in ["instance", "security-group", "image", "snapshot"] {
        let id = resource(deployed, kind);
        assert!(report.contains(&format!("deleted {kind} {id}")), "{report}");
    }
    assert!(
        report.contains(&format!("removed the API token {}", token_file.display())),
        "{report}"
    );
    assert!(!token_file.exists());
    let again = cli(&moto, &state, &["cleanup", "--aws", "cvm-e2e"]);
    assert!(text(&again).contains("nothing tagged"), "{}", text(&again));

    // Deployed again: a fresh token.
    let output = deploy(
        &moto,
        &state,
        &image,
        &["--vm_name", "cvm-e2e", "--wait-seconds", "30"],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("API token:  {}", token_file.display())),
        "{}",
        text(&output)
    );
    let runs = moto.ec2_calls("RunInstances").unwrap();
    assert_eq!(runs.len(), 2);
    let second = token_in_user_data(&runs[1], &token_file);
    assert_ne!(second, token, "each deploy makes a new token");
}

#[test]
fn dry_runs_and_refusals_create_nothing() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (image, _) = sample_image(dir.path());
    let image = image.to_str().unwrap();

    let dry = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--dry_run",
            "--json",
        ],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["plan"]["tee"], "AMD SEV-SNP");
    assert_eq!(plan["plan"]["region"], "us-east-2");
    assert_eq!(plan["plan"]["secure_boot"]["enabled"], false);
    // The readable plan says how the token travels and that Secure Boot is off.
    let dry = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--dry-run",
        ],
    );
    let said = text(&dry);
    assert!(
        said.contains("passed to the agent via the instance's user data (RunInstances UserData")
            && said.contains("Secure Boot: off (image unsigned"),
        "{said}"
    );
    // AWS has no --secure-boot: enrolling keys takes an AMI with UefiData (docs/deploy.md).
    let refused = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--secure-boot",
        ],
    );
    assert_eq!(refused.status.code(), Some(2));

    let wrong_type = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--vm_type",
            "t3.micro",
        ],
    );
    assert_eq!(wrong_type.status.code(), Some(2));
    assert!(
        text(&wrong_type).contains("has no AMD SEV-SNP"),
        "{}",
        text(&wrong_type)
    );

    let wrong_region = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--region",
            "ap-south-1",
        ],
    );
    assert_eq!(wrong_region.status.code(), Some(2));
    assert!(
        text(&wrong_region).contains("offers no SEV-SNP"),
        "{}",
        text(&wrong_region)
    );

    let no_credentials = aws_command(&moto, &state)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["deploy-aws", "--allow-from", ALLOW, "--image", image])
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
    assert!(!state.exists(), "no token file was left");
}

#[test]
fn a_failing_step_deletes_what_the_deploy_created() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
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

    let output = deploy(&moto, &state, &image, &["--vm-name", "clash"]);
    assert_eq!(output.status.code(), Some(2));
    let report = text(&output);
    assert!(report.contains("CreateSecurityGroup"), "{report}");
    assert!(report.contains("deleting what it created"), "{report}");
    assert!(report.contains("deleted image ami-"), "{report}");
    assert!(report.contains("deleted snapshot snap-"), "{report}");
    // The token made for it goes too, with the directories made for it.
    let token_file = state.join("cvm-cli/aws/clash/api-token");
    assert!(
        report.contains(&format!("removed the API token {}", token_file.display())),
        "{report}"
    );
    assert!(!state.exists(), "{}", state.display());

    let leftovers = cli(&moto, &state, &["cleanup", "--aws", "clash", "--dry-run"]);
    assert!(
        text(&leftovers).contains("nothing tagged"),
        "{}",
        text(&leftovers)
    );
    // The other party's group is untouched.
    assert!(moto.ec2_calls("DeleteSecurityGroup").unwrap().is_empty());
}

/// Port 8000 serves /update-workload: a deploy must say who may reach it, and the ports and
/// ranges are checked before anything is created (also with --dry-run).
#[test]
fn ingress_must_be_given_and_is_checked_before_anything() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (image, _) = sample_image(dir.path());
    let image = image.to_str().unwrap();

    for dry in [true, false] {
        let mut args = vec!["deploy-aws", "--image", image];
        if dry {
            args.push("--dry-run");
        }
        let refused = cli(&moto, &state, &args);
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
        let said = text(&refused);
        assert!(
            said.contains("--allow-from <your public IP>/32")
                && said.contains("--allow-from 0.0.0.0/0")
                && !said.contains("Plan:"),
            "{said}"
        );
    }
    for (args, expected) in [
        (&["--allow-from", "198.51.100.7"][..], "prefix length"),
        (&["--allow-from", "198.51.100.0/33"], "prefix length"),
        (&["--allow-from", "2001:db8::/129"], "prefix length"),
        (&["--allow-from", "not-an-ip/8"], "not an IPv4 or IPv6"),
        (&["--allow-from", "198.51.100.7/24"], "198.51.100.0/24"),
        (&["--allow-from", ALLOW, "--allow-from", ALLOW], "twice"),
        (
            &["--allow-from", ALLOW, "--additional-ports", "0"],
            "1-65535",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "443,443"],
            "twice",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "8000"],
            "agent's own",
        ),
    ] {
        let refused = cli(
            &moto,
            &state,
            &[&["deploy-aws", "--image", image][..], args].concat(),
        );
        assert_ne!(refused.status.code(), Some(0), "{args:?}");
        assert!(
            text(&refused).contains(expected),
            "{args:?}: {}",
            text(&refused)
        );
    }

    // The whole internet only when asked for, and then the plan warns.
    let open = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--image",
            image,
            "--allow-from",
            "0.0.0.0/0",
            "--allow-from",
            "::/0",
            "--dry-run",
            "--json",
        ],
    );
    assert!(open.status.success(), "{}", text(&open));
    let plan: serde_json::Value = serde_json::from_slice(&open.stdout).unwrap();
    assert_eq!(
        plan["plan"]["allow_from"],
        serde_json::json!(["0.0.0.0/0", "::/0"])
    );
    assert!(
        plan["plan"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("open to the whole internet"),
        "{plan}"
    );
    let open = cli(
        &moto,
        &state,
        &[
            "deploy-aws",
            "--image",
            image,
            "--allow-from",
            "0.0.0.0/0",
            "--dry-run",
        ],
    );
    let said = text(&open);
    assert!(
        said.contains("from 0.0.0.0/0") && said.contains("WARNING: port 8000"),
        "{said}"
    );

    assert!(
        moto.recording().unwrap().is_empty(),
        "requests were sent: {:?}",
        moto.recording().unwrap()
    );
    assert!(!state.exists(), "no token file was left");
}

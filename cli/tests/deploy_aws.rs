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
    common::stamp_gpt(&mut content);
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

/// The requests that could have changed something: every EBS call, and every EC2 action but
/// the read-only `Describe*` ones (which preflight and `--dry-run` make).
fn mutating(moto: &Moto) -> Vec<String> {
    moto.recording()
        .unwrap()
        .iter()
        .map(|request| {
            request
                .form()
                .get("Action")
                .cloned()
                .unwrap_or_else(|| format!("{} {}", request.method, request.url))
        })
        .filter(|action| !action.starts_with("Describe"))
        .collect()
}

/// One EC2 Query API call straight to moto (not through the CLI), for checking its state.
fn ec2_query(moto: &Moto, form: &str) -> String {
    let answer = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            // moto takes the region from the credential scope.
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-2/ec2/aws4_request, SignedHeaders=host, Signature=0",
            &format!("{}/", moto.endpoint()),
            "-d",
            &format!("Version=2016-11-15&{form}"),
        ])
        .output()
        .unwrap();
    assert!(answer.status.success(), "{}", text(&answer));
    String::from_utf8(answer.stdout).unwrap()
}

/// What moto still holds tagged with the deployment `name`: (kind, id) of live resources.
fn live_tagged(moto: &Moto, name: &str) -> Vec<(&'static str, String)> {
    let filter = format!("Filter.1.Name=tag:cvm-cli-deployment&Filter.1.Value.1={name}");
    let ids = |xml: &str, tag: &str| -> Vec<String> {
        let open = format!("<{tag}>");
        xml.split(&open)
            .skip(1)
            .filter_map(|rest| rest.split('<').next())
            .map(str::to_owned)
            .collect()
    };
    let mut live = Vec::new();
    let snapshots = ec2_query(
        moto,
        &format!("Action=DescribeSnapshots&Owner.1=self&{filter}"),
    );
    live.extend(
        ids(&snapshots, "snapshotId")
            .into_iter()
            .map(|id| ("snapshot", id)),
    );
    let images = ec2_query(
        moto,
        &format!("Action=DescribeImages&Owner.1=self&{filter}"),
    );
    live.extend(ids(&images, "imageId").into_iter().map(|id| ("image", id)));
    let groups = ec2_query(moto, &format!("Action=DescribeSecurityGroups&{filter}"));
    live.extend(
        ids(&groups, "groupId")
            .into_iter()
            .map(|id| ("security-group", id)),
    );
    let instances = ec2_query(
        moto,
        &format!(
            "Action=DescribeInstances&{filter}&Filter.2.Name=instance-state-name&\
             Filter.2.Value.1=pending&Filter.2.Value.2=running"
        ),
    );
    live.extend(
        ids(&instances, "instanceId")
            .into_iter()
            .map(|id| ("instance", id)),
    );
    live.sort();
    live.dedup();
    live
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

    // `list` knows the deployment from its state directory, and asks AWS for it by tag.
    let listed = cli(&moto, &state, &["list", "--aws", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let deployment = &listed["deployments"][0];
    assert_eq!(deployment["cloud"], "aws");
    assert_eq!(deployment["name"], "cvm-e2e");
    assert_eq!(deployment["api_token_file"], token_file.to_str().unwrap());
    let mut kinds: Vec<&str> = deployment["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["image", "instance", "security-group", "snapshot"]);

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
    assert_eq!(plan["plan"]["tee"], "sev-snp");
    assert_eq!(plan["plan"]["cloud"], "aws");
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

    assert_eq!(
        mutating(&moto),
        Vec::<String>::new(),
        "only reads were sent"
    );
    assert!(!state.exists(), "no token file was left");
}

#[test]
fn an_existing_security_group_name_is_refused_before_the_upload() {
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
    assert!(
        report.contains("security group clash-cvm already exists"),
        "{report}"
    );
    // Refused in preflight: nothing uploaded, nothing created, no token file.
    assert_eq!(
        mutating(&moto),
        vec!["CreateSecurityGroup".to_owned()],
        "only the test's own group was created"
    );
    assert!(!state.exists(), "{}", state.display());
    let leftovers = cli(&moto, &state, &["cleanup", "--aws", "clash", "--dry-run"]);
    assert!(
        text(&leftovers).contains("nothing tagged"),
        "{}",
        text(&leftovers)
    );
}

/// A failure right after each step (the runner's test hook) deletes exactly what exists by
/// then, newest first: moto is asked directly afterwards, and nothing tagged is left.
#[test]
fn a_failure_after_each_step_rolls_back_exactly_what_was_created() {
    let moto = Moto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (image, _) = sample_image(dir.path());
    let kinds = ["snapshot", "image", "security-group", "instance"];
    for step in 1..=kinds.len() {
        let name = format!("fail-{step}");
        let output = aws_command(&moto, &state)
            .env("CVM_CLI_TEST_FAIL_AFTER_STEP", step.to_string())
            .args(["deploy-aws", "--allow-from", ALLOW, "--image"])
            .arg(&image)
            .args(["--name", &name, "--wait-seconds", "30"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let report = text(&output);
        assert!(
            report.contains(&format!("failure injected after step {step}")),
            "{report}"
        );
        // Each created resource deleted, newest first, and nothing else.
        let deleted: Vec<&str> = report
            .lines()
            .filter_map(|line| line.strip_prefix("  deleted "))
            .map(|rest| rest.split(' ').next().unwrap())
            .collect();
        let mut expected: Vec<&str> = kinds[..step].to_vec();
        expected.reverse();
        assert_eq!(deleted, expected, "{report}");
        assert_eq!(live_tagged(&moto, &name), Vec::new(), "step {step}");
        assert!(!state.join("cvm-cli/aws").join(&name).exists());
    }
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

    assert_eq!(
        mutating(&moto),
        Vec::<String>::new(),
        "only reads were sent"
    );
    assert!(!state.exists(), "no token file was left");
}

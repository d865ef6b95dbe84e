//! The deploy mistakes of issue 15, each run through the real CLI: refused before any slow step,
//! with the exit code and message asserted, and nothing written or created. Credentials missing
//! (AWS, Azure, GCP), a region that does not exist (`--region narnia`), a security group name
//! that is taken (before the upload), a text file as the image, Secure Boot on an unsigned build.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use test_support::Moto;

const ALLOW: &str = "198.51.100.0/24";
const MIB: u64 = 1 << 20;

/// One mistake: the command line, its environment, and what the CLI must answer.
struct Mistake {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Variables the CLI must not see.
    unset: Vec<&'static str>,
    message: &'static str,
}

/// A raw GPT disk of 4 MiB, the way `cvm-image build` leaves it beside nothing else.
fn gpt_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let mut content = vec![0u8; 4 * MIB as usize];
    common::stamp_gpt(&mut content);
    content[MIB as usize] = 1;
    std::fs::write(&path, content).unwrap();
    path
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Someone else's security group named like the deployment's (`taken-cvm`).
fn take_group_name(moto: &Moto) {
    let taken = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-2/ec2/aws4_request, SignedHeaders=host, Signature=0",
            &format!("{}/", moto.endpoint()),
            "-d",
            "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=taken-cvm&GroupDescription=theirs",
        ])
        .output()
        .unwrap();
    assert!(taken.status.success());
}

#[test]
fn deploy_mistakes_are_refused_before_anything_slow() {
    let moto = Moto::start().unwrap();
    take_group_name(&moto);
    let build = tempfile::tempdir().unwrap();
    let image = gpt_disk(build.path());
    let text = build.path().join("README.md");
    std::fs::write(&text, "# not a disk\n".repeat(400)).unwrap();
    let image = image.to_str().unwrap().to_owned();
    let text = text.to_str().unwrap().to_owned();
    let no_tools = build.path().join("no-tools");
    std::fs::create_dir(&no_tools).unwrap();
    let aws_env = |with_keys: bool| {
        let mut env = vec![
            ("AWS_ENDPOINT_URL", moto.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_owned()),
        ];
        if with_keys {
            env.push(("AWS_ACCESS_KEY_ID", "testing".to_owned()));
            env.push(("AWS_SECRET_ACCESS_KEY", "testing".to_owned()));
        }
        env
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mistakes = [
        Mistake {
            what: "AWS without credentials",
            args: args(&["deploy-aws", "--allow-from", ALLOW, "--image", &image]),
            env: aws_env(false),
            unset: vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"],
            message: "no AWS credentials",
        },
        Mistake {
            what: "AWS security group name taken (before the upload)",
            args: args(&[
                "deploy-aws",
                "--allow-from",
                ALLOW,
                "--image",
                &image,
                "--name",
                "taken",
            ]),
            env: aws_env(true),
            unset: vec!["AWS_PROFILE"],
            message: "security group taken-cvm already exists",
        },
        Mistake {
            what: "a text file as the image",
            args: args(&["deploy-aws", "--allow-from", ALLOW, "--image", &text]),
            env: aws_env(true),
            unset: vec![],
            message: "is not a raw GPT disk image (it looks like a text file)",
        },
        Mistake {
            what: "Azure without credentials (before the VHD is written)",
            args: args(&["deploy-azure", "--allow-from", ALLOW, "--image", &image]),
            env: vec![
                (
                    "AZURE_SUBSCRIPTION_ID",
                    "00000000-1111-2222-3333-444444444444".into(),
                ),
                ("PATH", no_tools.to_str().unwrap().to_owned()),
            ],
            unset: vec!["AZURE_ACCESS_TOKEN", "CVM_AZURE_ARM_ENDPOINT"],
            message: "no Azure credentials",
        },
        Mistake {
            what: "Azure --region narnia",
            args: args(&[
                "deploy-azure",
                "--allow-from",
                ALLOW,
                "--image",
                &image,
                "--region",
                "narnia",
            ]),
            env: vec![("AZURE_ACCESS_TOKEN", "unused".into())],
            unset: vec![],
            message: "region \"narnia\" has no Intel TDX",
        },
        Mistake {
            what: "Azure --secure-boot with an unsigned build",
            args: args(&[
                "deploy-azure",
                "--allow-from",
                ALLOW,
                "--image",
                &image,
                "--secure-boot",
            ]),
            env: vec![("AZURE_ACCESS_TOKEN", "unused".into())],
            unset: vec![],
            message: "--secure-boot: cannot tell whether the image's UKI is signed",
        },
        Mistake {
            what: "GCP without credentials",
            args: args(&[
                "deploy-gcp",
                "--allow-from",
                ALLOW,
                "--image",
                &image,
                "--project-id",
                "my-project",
                "--bucket",
                "my-bucket",
            ]),
            env: vec![("PATH", no_tools.to_str().unwrap().to_owned())],
            unset: vec![
                "GOOGLE_OAUTH_ACCESS_TOKEN",
                "GOOGLE_APPLICATION_CREDENTIALS",
                "STORAGE_EMULATOR_HOST",
                "CVM_GCP_COMPUTE_ENDPOINT",
            ],
            message: "no Google Cloud credentials",
        },
    ];
    for mistake in mistakes {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
        command
            .args(&mistake.args)
            .env("HOME", home.path())
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("XDG_CACHE_HOME", home.path().join("cache"));
        for name in &mistake.unset {
            command.env_remove(name);
        }
        for (name, value) in &mistake.env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}: {said}", mistake.what);
        assert!(
            said.contains(mistake.message),
            "{}: wanted {:?} in {said}",
            mistake.what,
            mistake.message
        );
        // Nothing written: no token file, no VHD or tarball (not in the build folder either).
        assert_eq!(
            files(home.path()),
            Vec::<PathBuf>::new(),
            "{}",
            mistake.what
        );
        let mut in_build = files(build.path());
        in_build.sort();
        assert_eq!(in_build.len(), 2, "{}: {in_build:?}", mistake.what);
    }
    // Moto saw only reads (preflight) besides the test's own group.
    let writes: Vec<String> = moto
        .recording()
        .unwrap()
        .iter()
        .map(|r| {
            r.form()
                .get("Action")
                .cloned()
                .unwrap_or_else(|| r.url.clone())
        })
        .filter(|action| !action.starts_with("Describe"))
        .collect();
    assert_eq!(writes, ["CreateSecurityGroup"]);
}

//! The mistakes a new user makes (issue 15, all but the deploys'), run through the real binary:
//! each must end with the right exit status and a message that says what is wrong.

mod common;

use common::{vector, VECTORS};
use std::path::Path;
use std::process::{Command, Output};

/// One mistake and what the CLI must answer.
struct Mistake {
    what: &'static str,
    args: Vec<String>,
    exit: i32,
    /// Substrings of stderr (or of stdout, for a verification report).
    says: &'static [&'static str],
    /// Substrings that must not appear in either stream (the old misleading messages).
    never: &'static [&'static str],
}

/// Runs `cvm-cli` in `dir` with a private collateral cache (no user state, no network use).
fn run(dir: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .output()
        .expect("cvm-cli runs")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A folder like a user's: a ./workload the predecessor's form would have packed, a README and a
/// JSON file that is not a golden.
fn user_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workload")).unwrap();
    std::fs::write(
        dir.path().join("workload/docker-compose.yml"),
        "services: {}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "# notes\n\nnot a report\n").unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"region": "eu", "size": 2}"#,
    )
    .unwrap();
    dir
}

fn mistakes() -> Vec<Mistake> {
    let vlek_report = vector("trustee/snp-test-vlek-report.bin");
    let vlek = vector("trustee/snp-test-vlek.der");
    vec![
        Mistake {
            what: "a typo is an unknown command with a suggestion, never an upload",
            args: strings(&["inspct", "ev.json"]),
            exit: 2,
            says: &["unrecognized subcommand 'inspct'", "'inspect'"],
            never: &["upload", "packing", "workload"],
        },
        Mistake {
            what: "a typo with flags names the command meant",
            args: strings(&["verfy", "--host", "X"]),
            exit: 2,
            says: &["unrecognized subcommand 'verfy'", "'verify'"],
            never: &["use '-- --host'"],
        },
        Mistake {
            what: "the predecessor's form needs a token, not a file name",
            args: strings(&["10.0.0.4", "ev.json"]),
            exit: 2,
            says: &["does not look like an API token", "nothing was sent"],
            never: &[],
        },
        Mistake {
            what: "verify --report on a text file says it is not a report",
            args: strings(&["verify", "--report", "README.md"]),
            exit: 2,
            says: &["README.md is a text file", "not a report"],
            never: &["--vcek", "1184 bytes, expected"],
        },
        Mistake {
            what: "a VLEK without its chain says the VLEK needs the chain",
            args: vec![
                "verify".into(),
                "--offline".into(),
                "--report".into(),
                vlek_report,
                "--vcek".into(),
                vlek,
                "--at".into(),
                "2025-06-01T00:00:00Z".into(),
            ],
            exit: 1,
            says: &["FAIL  snp.chain", "a VLEK verifies only with its chain"],
            never: &["SEV-Turin", "PASS  snp.chain"],
        },
        Mistake {
            what: "inspect on a text file names it",
            args: strings(&["inspect", "README.md"]),
            exit: 2,
            says: &["a text file (3 lines, starting \"# notes\")"],
            never: &["golden measurement\n"],
        },
        Mistake {
            what: "inspect on JSON that is not a golden says so, with its keys",
            args: strings(&["inspect", "settings.json"]),
            exit: 2,
            says: &[
                "a JSON object with keys \"region\", \"size\"",
                "not a golden measurement",
            ],
            never: &["kind: golden"],
        },
        Mistake {
            what: "an error's causes are printed once",
            args: strings(&[
                "verify",
                "--collaterals",
                "settings.json",
                "--golden",
                "settings.json",
                "--nonce",
                "00112233445566778899aabbccddeeff",
            ]),
            exit: 2,
            says: &["settings.json"],
            never: &[],
        },
        Mistake {
            what: "deploy-local --data-unlock sealed is refused before a VM exists",
            args: strings(&[
                "deploy-local",
                "--image",
                "README.md",
                "--tee",
                "none",
                "--data-unlock",
                "sealed",
            ]),
            exit: 2,
            says: &["--data-unlock sealed", "use `pushed`", "`ephemeral`"],
            never: &["starting swtpm", "software TPM", "starting QEMU"],
        },
    ]
}

#[test]
fn every_mistake_gets_its_exit_status_and_message() {
    let dir = user_folder();
    for mistake in mistakes() {
        let output = run(dir.path(), &mistake.args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let both = format!("{stdout}{stderr}");
        assert_eq!(
            output.status.code(),
            Some(mistake.exit),
            "{}: {:?}\n{both}",
            mistake.what,
            mistake.args
        );
        for text in mistake.says {
            assert!(
                both.contains(text),
                "{}: missing {text:?}\n{both}",
                mistake.what
            );
        }
        for text in mistake.never {
            assert!(
                !both.contains(text),
                "{}: says {text:?}\n{both}",
                mistake.what
            );
        }
        assert!(!both.contains("panicked"), "{}: {both}", mistake.what);
        assert_no_repeated_cause(&stderr);
    }
    // Nothing was packed or sent from the user's folder.
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("workload"))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1);
}

/// `a: b: b` — the same cause twice in a row — never appears.
fn assert_no_repeated_cause(stderr: &str) {
    for line in stderr.lines() {
        let parts: Vec<&str> = line.split(": ").collect();
        for pair in parts.windows(2) {
            assert!(
                pair[0] != pair[1] || pair[0].is_empty(),
                "repeated cause: {line}"
            );
        }
    }
}

#[test]
fn a_vlek_with_its_chain_gets_past_the_chain_check() {
    let dir = user_folder();
    let output = run(
        dir.path(),
        &[
            "verify".into(),
            "--offline".into(),
            "--report".into(),
            vector("trustee/snp-test-vlek-report.bin"),
            "--vcek".into(),
            vector("trustee/snp-test-vlek.der"),
            "--chain".into(),
            vector("trustee/milan_ask_ark_asvk.pem"),
            "--at".into(),
            "2025-06-01T00:00:00Z".into(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("PASS  snp.chain"), "{stdout}");
}

#[test]
fn json_errors_are_one_object_with_error_and_causes() {
    let dir = user_folder();
    for args in [
        strings(&["--json", "inspect", "README.md"]),
        strings(&["inspect", "--json", "settings.json"]),
        strings(&["--json", "inspct", "x"]),
        strings(&["--json", "verify", "--no-such-flag"]),
        strings(&["-v", "--json", "verify", "--report", "README.md"]),
    ] {
        let output = run(dir.path(), &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let value: serde_json::Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not one JSON object ({e}): {stderr}"));
        let object = value.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable(); // a test build may keep insertion order (serde_json preserve_order)
        assert_eq!(keys, ["causes", "error"], "{args:?}: {stderr}");
        assert!(!value["error"].as_str().unwrap().is_empty(), "{stderr}");
        assert!(value["causes"].is_array(), "{stderr}");
    }
}

#[test]
fn completions_load_in_bash_and_exist_for_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &strings(&["completions", "bash"]));
    assert!(output.status.success());
    assert!(output.stdout.len() > 1000, "short bash completion script");
    let script = dir.path().join("cvm-cli.bash");
    std::fs::write(&script, &output.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourcing it registers the completion function.
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p cvm-cli",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let output = run(dir.path(), &strings(&["completions", shell]));
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "{shell}"
        );
    }
}

#[test]
fn man_pages_are_roff_for_the_cli_and_each_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &strings(&["man"]));
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(".TH cvm-cli 1"), "{page}");
    assert!(page.contains("inspect"), "{page}");
    let out = dir.path().join("man");
    let output = run(
        dir.path(),
        &strings(&["-q", "man", "--out-dir", out.to_str().unwrap()]),
    );
    assert!(output.status.success());
    assert!(output.stderr.is_empty(), "-q prints no progress");
    for page in ["cvm-cli.1", "cvm-cli-verify.1", "cvm-cli-inspect.1"] {
        assert!(out.join(page).is_file(), "{page}");
    }
}

#[test]
fn version_names_the_commit_and_build_date() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &strings(&["--version"]));
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no commit in {text}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
    let date = text.split("built ").nth(1).unwrap_or_default();
    assert!(date.len() >= 10 && date.as_bytes()[4] == b'-', "{text}");
}

#[test]
fn global_flags_stand_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let report = format!("{VECTORS}/virtee-sev/report_milan.hex");
    for args in [
        vec!["--json", "inspect", &report],
        vec!["inspect", "--json", &report],
        vec!["-q", "inspect", "--json", &report],
    ] {
        let output = run(dir.path(), &strings(&args));
        assert!(output.status.success(), "{args:?}");
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            value["kind"], "SEV-SNP attestation report (hex)",
            "{args:?}"
        );
    }
}

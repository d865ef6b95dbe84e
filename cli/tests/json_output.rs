//! The global `--json` gives every command one JSON document on stdout (progress never mixes in),
//! and `-q` silences progress but never the result. Cheap commands only: real vectors, a real
//! workload folder, a real swtpm, local state in a temporary directory.

mod common;

use common::vector;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use test_support::{busybox_image_archive, Swtpm};

const AT: &str = "2025-06-01T00:00:00Z";
const VECTOR_ERA_TCB: &str = "bootloader=2,tee=0,snp=6,microcode=93";
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Runs `cvm-cli` in `dir` with its state and caches there too.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("CVM_COLLATERAL_CACHE")
        .output()
        .expect("cvm-cli runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stdout as exactly one JSON document; stderr may hold nothing but JSON lines either.
fn document(output: &Output, what: &str) -> Value {
    let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    });
    for line in text(&output.stderr).lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "{what}: a text line on stderr with --json: {line}"
        );
    }
    value
}

/// The example workload with its image archive, as `golden` needs it.
fn workload(dir: &Path) -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    let workload = dir.join("workload");
    std::fs::create_dir_all(workload.join("config")).unwrap();
    for file in ["docker-compose.yml", "app.env"] {
        std::fs::copy(source.join(file), workload.join(file)).unwrap();
    }
    std::fs::write(workload.join("config/message.txt"), "hello\n").unwrap();
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[]).unwrap();
    std::fs::write(workload.join("hello.tar"), archive.bytes).unwrap();
    workload.display().to_string()
}

#[test]
fn every_command_prints_one_json_document() {
    let dir = tempfile::tempdir().unwrap();
    let workload = workload(dir.path());
    let golden_out = dir.path().join("golden.json");
    let golden_out = golden_out.to_str().unwrap();
    let report = vector("trustee/snp-test-report.bin");
    let vcek = vector("trustee/snp-test-vcek.der");
    let swtpm = Swtpm::start().unwrap();
    let tcti = swtpm.tcti();
    let golden = [
        "golden",
        "--workload",
        &workload,
        "--cloud",
        "qemu",
        "--tee",
        "none",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--json", "verify", "--report", &report, "--vcek", &vcek],
            "verified",
        ),
        (vec!["--json", "inspect", &report], "kind"),
        (golden.to_vec(), "pcrs"),
        ([&golden[..], &["--out", golden_out]].concat(), "written"),
        (
            vec!["snp-launch-digest", "--snp-ovmf", OVMF],
            "launch_digest",
        ),
        (vec!["list"], "deployments"),
        (vec!["tpm-ak", "--tcti", &tcti], "ak"),
        (
            vec![
                "deploy-local",
                "--image",
                "x.raw",
                "--tee",
                "none",
                "--dry-run",
            ],
            "plan",
        ),
    ];
    for (args, key) in cases {
        let mut args = args;
        if args[0] != "--json" {
            args.push("--json"); // after the subcommand: the flag is global
        }
        if args[1] == "verify" {
            args.extend(["--at", AT, "--min-tcb", VECTOR_ERA_TCB]);
        }
        let output = run(dir.path(), &args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        let value = document(&output, &args.join(" "));
        assert!(value.get(key).is_some(), "{args:?}: no {key:?} in {value}");
    }
    let written: Value = serde_json::from_slice(&std::fs::read(golden_out).unwrap()).unwrap();
    assert!(written["pcrs"].is_object(), "{written}");
}

#[test]
fn collateral_and_cleanup_answer_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("collateral");
    let cache = cache.to_str().unwrap();
    let shown = run(
        dir.path(),
        &["--json", "collateral", "show", "--cache-dir", cache],
    );
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_eq!(document(&shown, "collateral show"), serde_json::json!([]));
    let bundle = dir.path().join("bundle.json");
    let bundle = bundle.to_str().unwrap();
    let export = [
        "collateral",
        "export",
        "--cache-dir",
        cache,
        "--out",
        bundle,
    ];
    let exported = run(dir.path(), &[&export[..], &["--json"]].concat());
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    assert_eq!(document(&exported, "export")["exported"], 0);
    let imported = run(
        dir.path(),
        &[
            "--json",
            "collateral",
            "import",
            bundle,
            "--cache-dir",
            cache,
        ],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert_eq!(document(&imported, "import")["imported"], 0);

    // A local VM's state with no processes left: cleanup removes it and says so as JSON.
    let state = dir.path().join("state/cvm-cli/local/gone");
    std::fs::create_dir_all(&state).unwrap();
    let cleaned = run(dir.path(), &["--json", "cleanup", "--local", "gone"]);
    assert!(cleaned.status.success(), "{}", text(&cleaned.stderr));
    let report = document(&cleaned, "cleanup")["cleanup"].clone();
    assert_eq!(report["deleted"][0]["kind"], "local VM", "{report}");
    assert_eq!(report["deleted"][0]["id"], state.display().to_string());
    assert!(!state.exists());

    // Its error is one JSON object on stderr, and nothing on stdout.
    let again = run(dir.path(), &["--json", "cleanup", "--local", "gone"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(again.stdout.is_empty(), "{}", text(&again.stdout));
    let error: Value = serde_json::from_slice(&again.stderr).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("no local VM named"),
        "{error}"
    );
}

#[test]
fn quiet_keeps_the_result_and_drops_progress() {
    let dir = tempfile::tempdir().unwrap();
    let workload = workload(dir.path());
    let golden = [
        "golden",
        "--workload",
        &workload,
        "--cloud",
        "qemu",
        "--tee",
        "none",
        "--out",
        "golden.json",
    ];
    let plan = [
        "deploy-local",
        "--image",
        "x.raw",
        "--tee",
        "none",
        "--dry-run",
    ];
    // (command, what its progress says on stderr without -q)
    for (args, progress) in [
        (&golden[..], "golden measurement written to"),
        (&plan[..], "Plan for local VM"),
    ] {
        let normal = run(dir.path(), args);
        assert!(normal.status.success(), "{}", text(&normal.stderr));
        assert!(text(&normal.stderr).contains(progress), "{args:?}");
        assert!(
            normal.stdout.is_empty(),
            "{args:?}: {}",
            text(&normal.stdout)
        );
        let quiet = run(dir.path(), &[&["-q"], args].concat());
        assert!(quiet.status.success(), "{}", text(&quiet.stderr));
        assert!(quiet.stderr.is_empty(), "{args:?}: {}", text(&quiet.stderr));
    }
    // The result stays on stdout with -q.
    std::fs::create_dir_all(dir.path().join("state/cvm-cli/local/vm")).unwrap();
    let cleaned = run(dir.path(), &["-q", "cleanup", "--local", "vm"]);
    assert!(cleaned.status.success(), "{}", text(&cleaned.stderr));
    assert!(text(&cleaned.stdout).contains("stopped and removed local VM \"vm\""));
    assert!(cleaned.stderr.is_empty(), "{}", text(&cleaned.stderr));
    let digest = run(dir.path(), &["-q", "snp-launch-digest", "--snp-ovmf", OVMF]);
    assert!(digest.status.success(), "{}", text(&digest.stderr));
    assert_eq!(text(&digest.stdout).trim().len(), 96, "a SHA-384 in hex");
}

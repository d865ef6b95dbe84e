//! `deploy-local` through the deploy runner, on a real QEMU (TCG) and swtpm with a small GPT disk
//! that boots no further than the firmware: a failure after each step stops exactly the processes
//! it started and removes the state it wrote; the preflight refuses a taken port and an earlier
//! VM's state before anything exists; `--keep-on-failure` keeps a running VM that `list` shows and
//! `cleanup --local` stops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a rollback deletes, oldest first (the runner deletes newest first).
const KINDS: [&str; 3] = ["state-dir", "swtpm", "qemu"];

/// A raw GPT disk with no partitions: enough for the checks and for OVMF to look at.
fn sample_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    image_builder::gpt::write(&path, &[7; 16], &[]).unwrap();
    path
}

fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}

fn cli(state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
    command
        .env("XDG_STATE_HOME", state)
        .env_remove("CVM_CLI_TEST_FAIL_AFTER_STEP");
    command
}

/// `deploy-local` on TCG with a small VM and a short wait for the agent.
fn deploy(state: &Path, image: &Path, name: &str, port: u16, extra: &[&str]) -> Command {
    let mut command = cli(state);
    command
        .args(["deploy-local", "--image"])
        .arg(image)
        .args(["--name", name, "--port", &port.to_string()])
        .args(["--tee", "none", "--accel", "tcg", "--memory-mib", "256"])
        .args(["--cpus", "1", "--wait-seconds", "4"])
        .args(extra);
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Live processes whose command line names `dir/` (this VM's QEMU or swtpm), with their names.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        if args.iter().skip(1).any(|arg| arg.contains(&needle)) {
            found.push(args[0].clone());
        }
    }
    found
}

/// Stops whatever a test left running under `name`, also when an assertion failed.
struct CleanupOnDrop<'a> {
    state: &'a Path,
    name: String,
}

impl Drop for CleanupOnDrop<'_> {
    fn drop(&mut self) {
        let _ = cli(self.state)
            .args(["cleanup", "--local", &self.name])
            .output();
    }
}

/// The kinds the rollback said it deleted, in its order.
fn deleted_kinds(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix("  deleted "))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect()
}

#[test]
fn a_failure_after_each_step_rolls_back_exactly_what_was_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = sample_image(dir.path());
    for step in 1..=4 {
        let name = format!("fail-{step}");
        let _guard = CleanupOnDrop {
            state: &state,
            name: name.clone(),
        };
        let vm_dir = state.join("cvm-cli/local").join(&name);
        let mut command = deploy(&state, &image, &name, free_port(), &[]);
        // Step 4 (the agent) fails by itself: this disk has no agent.
        if step < 4 {
            command.env("CVM_CLI_TEST_FAIL_AFTER_STEP", step.to_string());
        }
        let output = command.output().unwrap();
        let report = text(&output);
        assert_eq!(output.status.code(), Some(2), "{report}");
        assert!(
            report.contains(&format!("deploy-local failed at step {step}")),
            "{report}"
        );
        if step < 4 {
            assert!(
                report.contains(&format!("failure injected after step {step}")),
                "{report}"
            );
        }
        let mut expected: Vec<&str> = KINDS[..step.min(3)].to_vec();
        expected.reverse();
        assert_eq!(deleted_kinds(&report), expected, "{report}");
        assert!(report.contains("removed the API token"), "{report}");
        assert_eq!(processes_naming(&vm_dir), Vec::<String>::new(), "{report}");
        assert!(!vm_dir.exists(), "step {step}: {report}");
    }
    // The directories the first deploy made for its token went with the last rollback.
    assert!(!state.join("cvm-cli").exists());
}

#[test]
fn the_preflight_refuses_before_anything_exists() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = sample_image(dir.path());
    let vm_dir = state.join("cvm-cli/local/vm");

    // What scripts/run-local.sh reads from a dry run, for an image not built yet.
    let port = free_port();
    let missing = dir.path().join("out/debian/disk.raw");
    let dry = deploy(&state, &missing, "vm", port, &["--dry-run"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", text(&dry));
    let said = text(&dry);
    let state_lines: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("state in "))
        .collect();
    assert_eq!(
        state_lines,
        [format!(
            "  TPM         swtpm, state in {}/tpm-state",
            vm_dir.display()
        )],
        "{said}"
    );
    assert!(said.contains("nothing was created"), "{said}");

    let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    for extra in [&[][..], &["--dry-run"]] {
        let output = deploy(&state, &image, "vm", port, extra).output().unwrap();
        let said = text(&output);
        assert_eq!(output.status.code(), Some(2), "{said}");
        assert!(
            said.contains(&format!("port {port} on 127.0.0.1 is taken")),
            "{said}"
        );
    }
    drop(taken);
    let twice = format!("{port}:8080");
    let output = deploy(&state, &image, "vm", port, &["--forward", &twice])
        .output()
        .unwrap();
    assert!(text(&output).contains("given twice"), "{}", text(&output));
    assert!(!state.exists(), "nothing written: {}", state.display());

    // An earlier VM's state (not running): a new VM would get its TPM; refused, kept as it is.
    std::fs::create_dir_all(vm_dir.join("tpm-state")).unwrap();
    let output = deploy(&state, &image, "vm", port, &[]).output().unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("what an earlier local VM \"vm\" left")
            && said.contains("cvm-cli cleanup --local vm"),
        "{said}"
    );
    assert!(vm_dir.join("tpm-state").is_dir());
    // With its token: the token file is never overwritten (the runner's check, before the plan).
    std::fs::write(vm_dir.join("api-token"), "earlier").unwrap();
    let output = deploy(&state, &image, "vm", port, &[]).output().unwrap();
    let said = text(&output);
    assert!(
        said.contains("already exists") && !said.contains("Plan for local VM"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(vm_dir.join("api-token")).unwrap(),
        "earlier"
    );
}

#[test]
fn a_kept_vm_is_listed_and_stopped_by_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = sample_image(dir.path());
    let _guard = CleanupOnDrop {
        state: &state,
        name: "kept".into(),
    };
    let vm_dir = state.join("cvm-cli/local/kept");
    let output = deploy(&state, &image, "kept", free_port(), &["--keep-on-failure"])
        .env("CVM_CLI_TEST_FAIL_AFTER_STEP", "3")
        .output()
        .unwrap();
    let report = text(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(
        report.contains("  kept qemu ") && report.contains("kept the API token"),
        "{report}"
    );
    let mut running = processes_naming(&vm_dir);
    running.sort();
    assert_eq!(running, ["qemu-system-x86_64", "swtpm"], "{report}");

    let listed = cli(&state).args(["--json", "list"]).output().unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let deployment = &listed["deployments"][0];
    assert_eq!(deployment["cloud"], "local");
    let mut kinds: Vec<&str> = deployment["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["qemu", "state-dir", "swtpm"], "{listed}");

    let dry = cli(&state)
        .args(["cleanup", "--local", "kept", "--dry-run"])
        .output()
        .unwrap();
    assert!(text(&dry).contains("would stop"), "{}", text(&dry));
    assert_eq!(processes_naming(&vm_dir).len(), 2);
    let cleaned = cli(&state)
        .args(["cleanup", "--local", "kept"])
        .output()
        .unwrap();
    assert!(cleaned.status.success(), "{}", text(&cleaned));
    assert!(text(&cleaned).contains("stopped and removed local VM \"kept\""));
    assert_eq!(processes_naming(&vm_dir), Vec::<String>::new());
    assert!(!vm_dir.exists());
}

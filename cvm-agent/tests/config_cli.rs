//! `cvm-agent --config` and `--check-config`, through the binary.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm-agent"))
        .args(args)
        // The configuration must come from the file and the defaults only.
        .env_clear()
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[test]
fn a_config_file_named_but_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = agent(&["-c", missing.to_str().unwrap(), "--check-config"]);
    assert!(!output.status.success(), "ran on defaults instead");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.toml"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn check_config_prints_the_effective_config_as_toml() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "workload_dir = \"/w\"\ncloud = \"gcp\"\nexternal_listen = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let output = agent(&["--config", file.to_str().unwrap(), "--check-config"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let printed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(printed["workload_dir"].as_str(), Some("/w"));
    assert_eq!(printed["cloud"].as_str(), Some("gcp"));
    assert_eq!(printed["external_listen"].as_str(), Some("127.0.0.1:9"));
    // Defaults fill the rest, and the output is a configuration file the agent accepts.
    assert_eq!(printed["tcti"].as_str(), Some("device:/dev/tpmrm0"));
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &text).unwrap();
    let output = agent(&["-c", again.to_str().unwrap(), "--check-config"]);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), text);
}

#[test]
fn without_config_the_default_location_may_be_absent() {
    if std::path::Path::new("/etc/cvm-agent/config.toml").exists() {
        return;
    }
    let output = agent(&["--check-config"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("workload_dir = \"/data/workload\""));
}

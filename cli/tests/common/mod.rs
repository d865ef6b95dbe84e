//! Helpers the CLI tests share: run the built `cvm-cli`, find the shared vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

/// Runs `cvm-cli` with `args` and waits for it.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
        .args(args)
        .output()
        .expect("cvm-cli runs")
}

/// The path of a file in ../shared/vectors.
pub fn vector(path: &str) -> String {
    format!("{VECTORS}/{path}")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first 1024 bytes of a raw GPT disk of `len` bytes: a protective MBR and a primary GPT
/// header with a valid CRC, as the deploys check before anything is sent.
pub fn gpt_head(len: u64) -> Vec<u8> {
    let mut head = vec![0u8; 1024];
    head[446 + 4] = 0xee;
    head[510] = 0x55;
    head[511] = 0xaa;
    let header = &mut head[512..512 + 92];
    header[0..8].copy_from_slice(b"EFI PART");
    header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    header[12..16].copy_from_slice(&92u32.to_le_bytes());
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    header[32..40].copy_from_slice(&((len / 512).max(2) - 1).to_le_bytes());
    let crc = image_builder::gpt::crc32(header);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Makes a whole disk's `content` start like a raw GPT disk (see [`gpt_head`]).
pub fn stamp_gpt(content: &mut [u8]) {
    let head = gpt_head(content.len() as u64);
    content[..1024].copy_from_slice(&head);
}

/// Writes the GPT start of a disk (see [`gpt_head`]) into the image file at `path`.
pub fn stamp_gpt_file(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.write_all_at(&gpt_head(len), 0).unwrap();
}

/// stdout as JSON (`--json`), or a panic that shows both streams.
pub fn stdout_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            stdout(output),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Where each item of `collateral fetch --json` came from.
pub fn origins(output: &Output) -> Vec<String> {
    stdout_json(output)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["origin"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// A measure-only agent on loopback for a test: both listeners on free ports, state in
/// `dir/run`, the API token from `dir/token`.
pub fn agent_config(dir: &Path, workload_dir: PathBuf, tcti: String) -> cvm_agent::config::Config {
    cvm_agent::config::Config {
        workload_dir,
        state_dir: dir.join("run"),
        local_listen: "127.0.0.1:0".parse().unwrap(),
        external_listen: "127.0.0.1:0".parse().unwrap(),
        local_socket: None,
        tcti,
        api_token_file: Some(dir.join("token")),
        firmware_event_log: None,
        measure_only: true,
        ..cvm_agent::config::Config::default()
    }
}

//! Helpers the CLI tests share: run the built `cvm-cli`, find the shared vectors.
#![allow(dead_code)]

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

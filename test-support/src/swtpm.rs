//! A private software TPM 2.0 per test. swtpm serves one TCP client at a time, so never share one.

use crate::process::Daemon;
use anyhow::{Context, Result};
use std::net::TcpListener;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A running `swtpm socket --tpm2` with its state in a temporary directory.
pub struct Swtpm {
    daemon: Daemon,
    port: u16,
    ctrl_port: u16,
    state: TempDir,
}

impl Swtpm {
    /// Starts a fresh, manufactured and started-up TPM (`not-need-init,startup-clear`).
    pub fn start() -> Result<Self> {
        let binary = crate::require_tool("swtpm")?;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(&binary) {
                Ok(tpm) => return Ok(tpm),
                Err(err) => last_error = Some(err), // port race with another binder: retry
            }
        }
        Err(last_error.expect("loop ran"))
    }

    fn try_start(binary: &std::path::Path) -> Result<Self> {
        let state = tempfile::Builder::new().prefix("swtpm-").tempdir()?;
        // tpm2-tss's swtpm TCTI always talks to the control channel on the next port up.
        let (port, ctrl_port) = free_port_pair()?;
        let mut command = Command::new(binary);
        command.args([
            "socket",
            "--tpm2",
            "--tpmstate",
            &format!("dir={}", state.path().display()),
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl",
            &format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1"),
            "--flags",
            "not-need-init,startup-clear",
        ]);
        let log = state.path().join("swtpm.log");
        let mut daemon = Daemon::spawn("swtpm", command, &log, Duration::from_secs(2))?;
        // Probe the control port only: the data port accepts a single client, which is the test's.
        daemon
            .wait_ready(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", ctrl_port)).is_ok()
            })
            .context("waiting for swtpm")?;
        Ok(Self {
            daemon,
            port,
            ctrl_port,
            state,
        })
    }

    /// The TCTI configuration string understood by tpm2-tss and tss-esapi.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The swtpm control port (power, reset, locality).
    pub fn ctrl_port(&self) -> u16 {
        self.ctrl_port
    }

    /// Where swtpm keeps its NVRAM state.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    /// The end of swtpm's log, for diagnosing a failed test.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// Two consecutive free loopback ports, from below Linux's ephemeral range (32768-60999): there
/// the port after a free one is usually an even port the kernel hands to outgoing connections,
/// so with many tests connecting at once no pair could be found.
fn free_port_pair() -> Result<(u16, u16)> {
    for _ in 0..256 {
        let mut random = [0u8; 2];
        openssl::rand::rand_bytes(&mut random)?;
        let port = 20_000 + u16::from_le_bytes(random) % 12_000;
        let first = TcpListener::bind(("127.0.0.1", port));
        let second = TcpListener::bind(("127.0.0.1", port + 1));
        if first.is_ok() && second.is_ok() {
            return Ok((port, port + 1));
        }
    }
    anyhow::bail!("no two consecutive free loopback ports found in 20000-32000")
}

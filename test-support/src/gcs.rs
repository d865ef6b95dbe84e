//! `gcp-storage-emulator` (the Cloud Storage JSON API, in memory) on port 80 of its own loopback
//! address: Google's clients send the Host header without the port, and the emulator builds its
//! resumable-upload URLs from that header, so port 80 is what keeps them right.

use crate::moto::EMULATOR_VENV;
use crate::process::Daemon;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tempfile::TempDir;

/// The next loopback address to try (127.0.0.77 first), shared by the tests of one process.
static NEXT_HOST: AtomicU8 = AtomicU8::new(77);

/// A running storage emulator.
pub struct GcsEmulator {
    addr: SocketAddr,
    daemon: Daemon,
    _dir: TempDir,
}

impl GcsEmulator {
    pub fn start() -> Result<Self> {
        let binary = std::path::Path::new(EMULATOR_VENV).join("bin/gcp-storage-emulator");
        anyhow::ensure!(
            binary.exists(),
            "{} missing: run scripts/install-test-deps.sh first",
            binary.display()
        );
        let dir = tempfile::Builder::new().prefix("gcs-").tempdir()?;
        // A loopback address whose port 80 is free.
        let addr = loop {
            let last = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
            if last >= 250 {
                bail!("no loopback address with a free port 80 in 127.0.0.77-250");
            }
            let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 80));
            if TcpListener::bind(addr).is_ok() {
                break addr;
            }
        };
        let mut command = Command::new(binary);
        command
            .args(["start", "--host", &addr.ip().to_string(), "--port", "80"])
            .arg("--in-memory")
            .current_dir(dir.path());
        let mut daemon = Daemon::spawn(
            "gcp-storage-emulator",
            command,
            &dir.path().join("gcs.log"),
            Duration::from_secs(5),
        )?;
        daemon.wait_ready(Duration::from_secs(60), || {
            std::net::TcpStream::connect(addr).is_ok()
        })?;
        Ok(Self {
            addr,
            daemon,
            _dir: dir,
        })
    }

    /// The value for `STORAGE_EMULATOR_HOST`, e.g. `http://127.0.0.77:80`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:80", self.addr.ip())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates a bucket through the JSON API.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let body = serde_json::json!({ "name": name }).to_string();
        let response = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::http::request(
                self.addr,
                "POST",
                "/storage/v1/b?project=test-project",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ))
            .context("creating a bucket")?;
        if !(200..300).contains(&response.status) {
            bail!(
                "creating bucket {name}: HTTP {}: {}",
                response.status,
                response.text()
            );
        }
        Ok(())
    }

    /// The end of the emulator's log, for failed tests.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

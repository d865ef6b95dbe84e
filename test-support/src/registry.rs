//! Debian's `docker-registry` (distribution v2) on loopback, so pushes, pulls and `RepoDigests`
//! are real without any public registry.

use crate::process::{free_port, Daemon};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A running registry storing blobs in a temporary directory.
pub struct Registry {
    _daemon: Daemon,
    port: u16,
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `/v2/` answers.
    pub fn start() -> Result<Self> {
        let binary = crate::require_tool("docker-registry")?;
        let dir = tempfile::Builder::new().prefix("registry-").tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut command = Command::new(binary);
        command.arg("serve").arg(&config);
        let log = dir.path().join("registry.log");
        let mut daemon = Daemon::spawn("docker-registry", command, &log, Duration::from_secs(3))?;
        daemon
            .wait_ready(Duration::from_secs(20), || {
                http_status(port, "/v2/") == Some(200)
            })
            .context("waiting for docker-registry")?;
        Ok(Self {
            _daemon: daemon,
            port,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The manifest digest the registry reports for `repository:tag` (`Docker-Content-Digest`).
    pub fn manifest_digest(&self, repository: &str, tag: &str) -> Result<String> {
        let response = http_request(
            self.port,
            &format!("/v2/{repository}/manifests/{tag}"),
            "HEAD",
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json",
        )
        .context("asking the registry for a manifest")?;
        response
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| value.trim().to_owned())
            })
            .with_context(|| format!("no Docker-Content-Digest in registry answer:\n{response}"))
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let response = http_request(port, path, "GET", "*/*").ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A minimal HTTP/1.0 exchange: enough for a readiness probe and one header, no client crate.
fn http_request(port: u16, path: &str, method: &str, accept: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response)?;
    Ok(response)
}

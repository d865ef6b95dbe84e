//! The `moto` AWS emulator on a free loopback port, with request recording on: moto accepts but
//! ignores some parameters (RegisterImage's BootMode/TpmSupport, RunInstances' CpuOptions), so
//! tests assert on what was actually sent.

use crate::process::{free_port, Daemon};
use anyhow::{Context, Result};
use base64::Engine;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// Where scripts/install-test-deps.sh puts the Python emulators.
pub const EMULATOR_VENV: &str = "/opt/cvm-test-venv";

/// A running moto server.
pub struct Moto {
    port: u16,
    daemon: Daemon,
    recording: std::path::PathBuf,
    _dir: TempDir,
}

/// One request moto received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The form parameters of an EC2 Query API call (empty for other requests).
    pub fn form(&self) -> BTreeMap<String, String> {
        url_decode_form(&String::from_utf8_lossy(&self.body))
    }
}

impl Moto {
    pub fn start() -> Result<Self> {
        let binary = std::path::Path::new(EMULATOR_VENV).join("bin/moto_server");
        anyhow::ensure!(
            binary.exists(),
            "{} missing: run scripts/install-test-deps.sh first",
            binary.display()
        );
        let dir = tempfile::Builder::new().prefix("moto-").tempdir()?;
        let port = free_port()?;
        let recording = dir.path().join("recording.jsonl");
        std::fs::write(&recording, b"")?;
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .current_dir(dir.path());
        let mut daemon = Daemon::spawn(
            "moto",
            command,
            &dir.path().join("moto.log"),
            Duration::from_secs(5),
        )?;
        daemon.wait_ready(Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Self {
            port,
            daemon,
            recording,
            _dir: dir,
        })
    }

    /// The endpoint to put in `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request moto received so far, in order.
    pub fn recording(&self) -> Result<Vec<RecordedRequest>> {
        let text = std::fs::read_to_string(&self.recording).context("moto's recording")?;
        let mut requests = Vec::new();
        // One JSON object per request; under parallel requests moto's threads do not always
        // write the newline between two, so read a stream of values rather than lines.
        for entry in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
            let entry = entry.context("moto's recording")?;
            let body = entry["body"].as_str().unwrap_or_default();
            let body = if entry["body_encoded"].as_bool() == Some(true) {
                base64::engine::general_purpose::STANDARD.decode(body)?
            } else {
                body.as_bytes().to_vec()
            };
            requests.push(RecordedRequest {
                method: entry["method"].as_str().unwrap_or_default().to_owned(),
                url: entry["url"].as_str().unwrap_or_default().to_owned(),
                body,
            });
        }
        Ok(requests)
    }

    /// The parameters of every EC2 call of `action`, in order.
    pub fn ec2_calls(&self, action: &str) -> Result<Vec<BTreeMap<String, String>>> {
        Ok(self
            .recording()?
            .iter()
            .map(RecordedRequest::form)
            .filter(|form| form.get("Action").map(String::as_str) == Some(action))
            .collect())
    }

    /// The end of moto's log, for failed tests.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

fn url_decode_form(text: &str) -> BTreeMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match text
                    .get(i + 1..i + 3)
                    .map(|hex| u8::from_str_radix(hex, 16))
                {
                    Some(Ok(byte)) => {
                        out.push(byte);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (decode(key), decode(value)))
        .collect()
}

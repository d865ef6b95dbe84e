//! Agent configuration: a TOML file, then `CVM_AGENT_*` environment overrides, then defaults that
//! match the image layout (docs/agent.md).

use anyhow::{bail, Context, Result};
use cvm_attestation::evidence::{Cloud, Tee};
use cvm_attestation::workload::DataUnlock;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the agent needs to know, resolved.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The workload folder (compose file, config/, secrets/, image archives).
    pub workload_dir: PathBuf,
    /// Where state that must survive an agent restart but not a reboot lives.
    pub state_dir: PathBuf,
    /// Local listener, for the workload on this VM.
    pub local_listen: SocketAddr,
    /// External listener, for verifiers and operators.
    pub external_listen: SocketAddr,
    /// Serve the external listener over TLS with a key made at start and bound into every
    /// evidence document, so clients can pin it after verifying (on by default).
    pub external_tls: bool,
    /// A Unix socket serving the local API, alone in its directory, which compose receives as
    /// `CVM_AGENT_SOCKET_DIR` so the workload can mount it (containers on a bridge network cannot
    /// reach the VM's 127.0.0.1).
    pub local_socket: Option<PathBuf>,
    /// TPM access, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Docker Engine API socket (Docker or Podman's Docker-compatible service).
    pub engine_socket: PathBuf,
    /// The compose tool and its leading arguments, run with DOCKER_HOST set to `engine_socket`.
    pub compose_command: Vec<String>,
    /// `azure | gcp | aws | qemu`, or absent to detect.
    pub cloud: Option<Cloud>,
    /// `sev-snp | tdx | none`, or absent to detect.
    pub tee: Option<Tee>,
    /// File holding the bearer token for /update-workload and /container-logs. A salted HMAC of
    /// it is measured into PCR 23 with the workload. Without it those routes are disabled.
    pub api_token_file: Option<PathBuf>,
    /// The image build's predicted measurements (measurements.json), served as golden values.
    pub image_measurements: Option<PathBuf>,
    /// VCEK (DER) for SEV-SNP platforms whose host does not provide it with the report.
    pub vcek_path: Option<PathBuf>,
    /// Extra certificates (DER) for the VCEK chain (ASK/ASVK), e.g. from Azure's host service.
    pub vcek_chain_paths: Vec<PathBuf>,
    /// Azure SEV-SNP without `vcek_path`: Azure's host certificate service (THIM), where the agent
    /// gets the VCEK chain it serves (docs/collateral.md). A local server in tests.
    pub azure_certs_url: String,
    /// TEST-ONLY roots /offchain-verify accepts in addition to AMD's. Never set in production.
    pub test_roots: Vec<PathBuf>,
    /// The firmware's TCG2 event log, included in evidence when readable.
    pub firmware_event_log: Option<PathBuf>,
    /// TDX: the kernel's RTMR3 attribute (Linux 6.16+). When it exists, every workload event is
    /// also extended into RTMR3, the TD's own register (docs/measurement.md section 7).
    pub rtmr3_path: PathBuf,
    /// Start the workload after measuring it (off for measurement-only runs).
    pub start_workload: bool,
    /// No container engine on this image: image IDs are computed from the `*.tar` archives in
    /// the workload folder, and nothing is started. For minimal images and tests of the
    /// attestation path.
    pub measure_only: bool,
    /// Largest /update-workload archive, in bytes.
    pub max_upload_bytes: usize,
    /// Open connections per listener; one more is closed right after `accept`.
    pub max_connections: usize,
    /// A TLS client that has not finished its handshake after this many seconds is dropped.
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may take to send a complete request head, counted from its
    /// accept (after the TLS handshake) or from the end of its previous response.
    pub header_read_timeout_secs: u64,
    /// A connection on which nothing moves (no byte read or written, no request being handled)
    /// for this many seconds is closed: clients that stop reading their response.
    pub idle_timeout_secs: u64,
    /// Evidence requests queued for (or at) the TPM at once; more are answered 503.
    pub tpm_queue_capacity: usize,
    /// Evidence requests per second each client (source address; an IPv6 /64; the local socket
    /// as one) may make on each listener, sustained; more are answered 429 with Retry-After.
    pub client_evidence_per_sec: u32,
    /// Evidence requests a client may make at once before `client_evidence_per_sec` applies.
    pub client_evidence_burst: u32,
    /// Where the key of `/data` comes from: `ephemeral` (made here at each boot) or `pushed`
    /// (`/unlock` after the client verified the VM); absent: the agent does not manage `/data`
    /// (test images). Recorded in PCR 23 (docs/data-at-rest.md).
    pub data_unlock: Option<DataUnlock>,
    /// Where the key is handed to `data_open_command` (tmpfs; removed right after).
    pub data_key_file: PathBuf,
    /// Opens and mounts `/data` with the key in `data_key_file`; `{mode}` becomes the unlock mode.
    pub data_open_command: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workload_dir: PathBuf::from("/data/workload"),
            state_dir: PathBuf::from("/run/cvm-agent"),
            local_listen: "127.0.0.1:7999".parse().expect("literal address"),
            external_listen: "0.0.0.0:8000".parse().expect("literal address"),
            external_tls: true,
            local_socket: Some(PathBuf::from("/run/cvm-agent/api/api.sock")),
            tcti: "device:/dev/tpmrm0".into(),
            engine_socket: PathBuf::from("/run/podman/podman.sock"),
            compose_command: vec!["docker-compose".into()],
            cloud: None,
            tee: None,
            api_token_file: None,
            image_measurements: None,
            vcek_path: None,
            vcek_chain_paths: Vec::new(),
            azure_certs_url: cvm_attester::tee::AZURE_THIM_URL.into(),
            test_roots: Vec::new(),
            firmware_event_log: Some(PathBuf::from(
                "/sys/kernel/security/tpm0/binary_bios_measurements",
            )),
            rtmr3_path: PathBuf::from(
                "/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384",
            ),
            start_workload: true,
            measure_only: false,
            max_upload_bytes: 256 << 20,
            max_connections: 1024,
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 30,
            tpm_queue_capacity: crate::tpm_actor::DEFAULT_QUEUE_CAPACITY,
            client_evidence_per_sec: 20,
            client_evidence_burst: 60,
            data_unlock: None,
            data_key_file: PathBuf::from("/run/cvm-agent/data/key"),
            data_open_command: vec![
                "systemctl".into(),
                "start".into(),
                "cvm-data@{mode}.service".into(),
            ],
        }
    }
}

impl Config {
    /// Reads `path` (when given), then applies `CVM_AGENT_*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("configuration {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// The configuration as a TOML file that [`Config::load`] reads back to the same values
    /// (unset optional settings are left out). It holds no secret: the API token is a path.
    pub fn to_toml(&self) -> Result<String> {
        basic_toml::to_string(self).context("writing the configuration as TOML")
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let parse_addr = |name: &str, value: String| -> Result<SocketAddr> {
            value
                .parse()
                .with_context(|| format!("{name}={value:?} is not an address"))
        };
        if let Some(v) = get("CVM_AGENT_DATA_UNLOCK").filter(|v| !v.is_empty()) {
            self.data_unlock = Some(
                v.parse()
                    .map_err(|e: String| anyhow::anyhow!("CVM_AGENT_DATA_UNLOCK: {e}"))?,
            );
        }
        if let Some(v) = get("CVM_AGENT_WORKLOAD_DIR") {
            self.workload_dir = v.into();
        }
        if let Some(v) = get("CVM_AGENT_STATE_DIR") {
            self.state_dir = v.into();
        }
        if let Some(v) = get("CVM_AGENT_LOCAL_LISTEN") {
            self.local_listen = parse_addr("CVM_AGENT_LOCAL_LISTEN", v)?;
        }
        if let Some(v) = get("CVM_AGENT_EXTERNAL_LISTEN") {
            self.external_listen = parse_addr("CVM_AGENT_EXTERNAL_LISTEN", v)?;
        }
        if let Some(v) = get("CVM_AGENT_EXTERNAL_TLS") {
            self.external_tls = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("CVM_AGENT_TCTI") {
            self.tcti = v;
        }
        if let Some(v) = get("CVM_AGENT_ENGINE_SOCKET") {
            self.engine_socket = v.into();
        }
        if let Some(v) = get("CVM_AGENT_MEASURE_ONLY") {
            self.measure_only = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("CVM_AGENT_API_TOKEN_FILE") {
            self.api_token_file = Some(v.into());
        }
        if let Some(v) = get("CVM_AGENT_CLOUD") {
            self.cloud = Some(
                serde_json::from_value(serde_json::Value::String(v.clone())).with_context(
                    || format!("CVM_AGENT_CLOUD={v:?}: expected azure, gcp, aws or qemu"),
                )?,
            );
        }
        if let Some(v) = get("CVM_AGENT_TEE") {
            self.tee = Some(
                serde_json::from_value(serde_json::Value::String(v.clone())).with_context(
                    || format!("CVM_AGENT_TEE={v:?}: expected sev-snp, tdx or none"),
                )?,
            );
        }
        if self.compose_command.is_empty() {
            bail!("compose_command must name a program");
        }
        self.check_limits()?;
        Ok(())
    }

    /// Zero would close every connection at once or refuse every request.
    fn check_limits(&self) -> Result<()> {
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("tpm_queue_capacity", self.tpm_queue_capacity as u64),
            (
                "client_evidence_per_sec",
                self.client_evidence_per_sec.into(),
            ),
            ("client_evidence_burst", self.client_evidence_burst.into()),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_then_environment_overrides() {
        let mut config: Config = toml::from_str(
            "workload_dir = \"/w\"\ntcti = \"swtpm:port=1\"\ncloud = \"gcp\"\nlocal_listen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(config.workload_dir, PathBuf::from("/w"));
        assert_eq!(config.cloud, Some(Cloud::Gcp));
        assert_eq!(
            config.external_listen.port(),
            8000,
            "defaults fill the rest"
        );
        config
            .apply_env(|name| (name == "CVM_AGENT_TCTI").then(|| "device:/dev/tpm0".into()))
            .unwrap();
        assert_eq!(config.tcti, "device:/dev/tpm0");
        let err = config
            .apply_env(|name| (name == "CVM_AGENT_TEE").then(|| "sgx".into()))
            .unwrap_err();
        assert!(err.to_string().contains("CVM_AGENT_TEE"), "{err}");
        assert!(toml::from_str::<Config>("workload = \"/typo\"").is_err());
    }

    #[test]
    fn toml_output_reads_back() {
        let mut config = Config {
            cloud: Some(Cloud::Gcp),
            api_token_file: Some("/run/token".into()),
            ..Config::default()
        };
        config.data_unlock = Some(DataUnlock::Pushed);
        let text = config.to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
        assert!(text.contains("cloud = \"gcp\""), "{text}");
    }
}

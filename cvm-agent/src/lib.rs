//! The in-guest attestation agent: measures the workload into PCR 23, runs it, and serves
//! evidence (docs/agent.md). Start-up order: configuration -> platform -> TPM and AK -> images ->
//! measurement -> workload -> HTTP listeners.

pub mod api;
pub mod archive;
pub mod audit;
pub mod config;
pub mod data;
pub mod engine;
pub mod platform;
pub mod provision;
pub mod serve;
pub mod tls;
pub mod tpm_actor;
pub mod workload;

use anyhow::{bail, Context, Result};
use api::{AppState, Listener};
use config::Config;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::GoldenPcr;
use cvm_attestation::snp::certs::parse_certificate;
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::Sha256Digest;
use cvm_attester::{AzureSnp, AzureTdx, ConfigfsTsm, NoTee, SevGuest, TeeBackend};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use workload::StartKind;

/// Fail-points for the fault-injection tests (`cvm-agent/tests/faults.rs`): with
/// `CVM_AGENT_FAULT=<step>` a debug build kills itself with SIGKILL at that step of an update, a
/// real `kill -9` at a known place. Release builds never read the variable.
pub mod fault {
    /// Where an update can be cut short.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Step {
        /// The upload is unpacked into its staging folder.
        Unpack,
        /// The new workload is validated and its images loaded; nothing measured yet.
        Validate,
        /// The first of the new events reached PCR 23, the others not yet.
        Extend,
        /// Every new event reached PCR 23; the log does not have them yet.
        Measure,
        /// The old folder moved aside, the new one not yet in its place.
        Swap,
        /// The new workload started; the update not yet marked done.
        Start,
        /// A rollback moved the failed folder aside, the previous one not yet back.
        Rollback,
        /// Not a kill: saving the log after PCR 23 was extended fails ([`io_error`]), as a disk
        /// that refuses the write would. Not in [`Step::ALL`].
        SaveLog,
    }

    impl Step {
        pub const ALL: [Step; 7] = [
            Step::Unpack,
            Step::Validate,
            Step::Extend,
            Step::Measure,
            Step::Swap,
            Step::Start,
            Step::Rollback,
        ];

        /// The value of `CVM_AGENT_FAULT` that selects this step.
        pub fn name(self) -> &'static str {
            match self {
                Step::Unpack => "unpack",
                Step::Validate => "validate",
                Step::Extend => "extend",
                Step::Measure => "measure",
                Step::Swap => "swap",
                Step::Start => "start",
                Step::Rollback => "rollback",
                Step::SaveLog => "save-log",
            }
        }
    }

    /// Kills this process (SIGKILL: nothing runs after it) when `CVM_AGENT_FAULT` names `step`,
    /// in debug builds only.
    pub fn point(step: Step) {
        #[cfg(debug_assertions)]
        if std::env::var("CVM_AGENT_FAULT").is_ok_and(|value| value == step.name()) {
            tracing::error!(step = step.name(), "fault injection: SIGKILL");
            // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so nothing returns here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = step;
    }

    /// An I/O error (the process lives on) when `CVM_AGENT_FAULT` names `step`, in debug builds
    /// only.
    pub fn io_error(step: Step) -> std::io::Result<()> {
        #[cfg(debug_assertions)]
        if std::env::var("CVM_AGENT_FAULT").is_ok_and(|value| value == step.name()) {
            tracing::error!(step = step.name(), "fault injection: I/O error");
            return Err(std::io::Error::other(format!(
                "fault injection at {}",
                step.name()
            )));
        }
        #[cfg(not(debug_assertions))]
        let _ = step;
        Ok(())
    }
}

/// A running agent.
pub struct Agent {
    pub local_addr: SocketAddr,
    pub external_addr: SocketAddr,
    pub start_kind: StartKind,
    pub state: Arc<AppState>,
    tasks: Vec<JoinHandle<()>>,
    /// Why a listener stopped (they only stop on a fatal error).
    stopped: tokio::sync::mpsc::UnboundedReceiver<anyhow::Error>,
}

impl Agent {
    /// Starts the agent with the TEE backend the platform calls for.
    pub async fn start(config: Config) -> Result<Self> {
        let platform = platform::detect(config.cloud, config.tee);
        let tee = tee_backend(platform, &config)?;
        Self::start_with(config, platform, tee).await
    }

    /// Starts the agent with an explicit TEE backend (tests use a TEST-ONLY signer here).
    pub async fn start_with(
        config: Config,
        platform: Platform,
        tee: Box<dyn TeeBackend>,
    ) -> Result<Self> {
        tracing::info!(%platform, tcti = %config.tcti, "starting");
        let token = read_api_token(&config)?;
        // Bearer checks compare hashes; PCR 23 gets the token's salted commitment (workload.rs).
        let token_hash = token.as_deref().map(|t| Sha256Digest::of(t.as_bytes()));
        let (listeners, local_addr, external_addr) = bind_listeners(&config).await?;
        let tpm = tpm_actor::TpmActor::start(
            &config.tcti,
            platform,
            tee,
            config.firmware_event_log.clone(),
            &config.rtmr3_path,
        )?
        .with_queue_capacity(config.tpm_queue_capacity);
        let engine = connect_engine(&config)?;
        let (workloads, start_kind) =
            start_workloads(&config, platform, engine, tpm.clone(), token).await?;
        tracing::info!(?start_kind, "workload measured");
        let test_roots = read_test_roots(&config)?;
        let tls = tls_identity(&config)?;
        let state = Arc::new(AppState {
            platform,
            tpm,
            workloads: Arc::new(workloads),
            token_hash,
            image_pcrs: image_pcrs(config.image_measurements.as_deref())?,
            test_roots,
            workload_dir: config.workload_dir.clone(),
            max_upload_bytes: config.max_upload_bytes,
            tls_key: tls.as_ref().map(|tls| tls.spki_sha256),
        });

        let tls = tls.map(|tls| tls.acceptor());
        let limits = serve::Limits::from(&config);
        let (tasks, stopped) = spawn_listeners(&state, listeners, tls, limits);
        tracing::info!(
            %local_addr,
            %external_addr,
            tls_key = state.tls_key.map(hex::encode).unwrap_or_default(),
            "serving"
        );
        Ok(Self {
            local_addr,
            external_addr,
            start_kind,
            state,
            tasks,
            stopped,
        })
    }

    /// Runs until a listener stops, which only a fatal error makes it do: returns that error,
    /// so the process exits non-zero and systemd restarts it.
    /// The same when the TPM failed during an extend: a restart reconciles the log with PCR 23.
    pub async fn wait(mut self) -> Result<()> {
        let workloads = Arc::clone(&self.state.workloads);
        tokio::select! {
            stopped = self.stopped.recv() => match stopped {
                Some(error) => Err(error),
                None => bail!("every listener stopped"),
            },
            failed = workloads.failed() => {
                // Time for the refusal to reach its client before the process ends.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Err(failed.into())
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The listeners: local TCP, external TCP, and the local Unix socket when configured.
type Listeners = (
    tokio::net::TcpListener,
    tokio::net::TcpListener,
    Option<tokio::net::UnixListener>,
);

/// The API token, when configured (at least 32 characters).
fn read_api_token(config: &Config) -> Result<Option<String>> {
    let Some(path) = &config.api_token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token {}", path.display()))?;
    let token = token.trim();
    if token.len() < 32 {
        bail!(
            "the API token in {} is shorter than 32 characters",
            path.display()
        );
    }
    Ok(Some(token.to_owned()))
}

/// Binds the listeners and returns them with the TCP addresses. They are bound before the
/// workload starts, so it finds the local API socket; they are served once the workload is
/// measured.
async fn bind_listeners(config: &Config) -> Result<(Listeners, SocketAddr, SocketAddr)> {
    let local = tokio::net::TcpListener::bind(config.local_listen)
        .await
        .with_context(|| format!("listening on {}", config.local_listen))?;
    let external = tokio::net::TcpListener::bind(config.external_listen)
        .await
        .with_context(|| format!("listening on {}", config.external_listen))?;
    let (local_addr, external_addr) = (local.local_addr()?, external.local_addr()?);
    let unix = match &config.local_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Some(
                tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("listening on {}", path.display()))?,
            )
        }
        None => None,
    };
    Ok(((local, external, unix), local_addr, external_addr))
}

/// The container engine, unless the agent only measures.
fn connect_engine(config: &Config) -> Result<Option<engine::Engine>> {
    if config.measure_only {
        tracing::warn!("measure-only: the workload is measured but not started (no engine)");
        return Ok(None);
    }
    Ok(Some(engine::Engine::connect(
        &config.engine_socket,
        config.compose_command.clone(),
        config
            .local_socket
            .as_deref()
            .and_then(|socket| socket.parent())
            .map(|dir| dir.to_owned()),
    )?))
}

/// Measures the workload (and starts it when configured), with the data volume when
/// `/data` is to be unlocked.
async fn start_workloads(
    config: &Config,
    platform: Platform,
    engine: Option<engine::Engine>,
    tpm: tpm_actor::TpmActor,
    token: Option<String>,
) -> Result<(workload::Workloads, StartKind)> {
    workload::Workloads::start(
        config.workload_dir.clone(),
        config.state_dir.clone(),
        engine,
        tpm,
        token,
        config.start_workload,
        config.data_unlock.map(|mode| {
            data::DataVolume::new(
                mode,
                config.data_key_file.clone(),
                config.data_open_command.clone(),
            )
            .on_platform(platform, &config.tcti)
        }),
    )
    .await
}

/// The TEST-ONLY SNP roots named in the configuration.
fn read_test_roots(config: &Config) -> Result<Vec<TrustedRoot>> {
    config
        .test_roots
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading test root {}", path.display()))?;
            Ok(TrustedRoot {
                name: path.display().to_string(),
                certificate: parse_certificate(&bytes)?,
                test_only: true,
            })
        })
        .collect()
}

/// A fresh TLS key for the external listener, when configured.
fn tls_identity(config: &Config) -> Result<Option<tls::TlsIdentity>> {
    if config.external_tls {
        Ok(Some(
            tls::TlsIdentity::generate().context("making the TLS key")?,
        ))
    } else {
        tracing::warn!("external listener without TLS: bearer tokens travel in the clear");
        Ok(None)
    }
}

/// Serves every listener through the one accept loop, with the same limits (serve.rs); the
/// receiver gets why a listener stopped.
fn spawn_listeners(
    state: &Arc<AppState>,
    (local, external, unix): Listeners,
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    limits: serve::Limits,
) -> (
    Vec<JoinHandle<()>>,
    tokio::sync::mpsc::UnboundedReceiver<anyhow::Error>,
) {
    let (stopped_tx, stopped) = tokio::sync::mpsc::unbounded_channel();
    let local_app = api::router(state.clone(), Listener::Local);
    let external_app = api::router(state.clone(), Listener::External);
    let mut tasks = vec![
        serve::spawn("local", local, None, local_app, limits, stopped_tx.clone()),
        serve::spawn(
            "external",
            external,
            tls,
            external_app,
            limits,
            stopped_tx.clone(),
        ),
    ];
    if let Some(socket) = unix {
        let app = api::router(state.clone(), Listener::Local);
        tasks.push(serve::spawn(
            "local socket",
            socket,
            None,
            app,
            limits,
            stopped_tx,
        ));
    }
    (tasks, stopped)
}

fn read_der(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_certificate(&bytes)?.to_der()?)
}

/// The TEE backend for a platform.
fn tee_backend(platform: Platform, config: &Config) -> Result<Box<dyn TeeBackend>> {
    Ok(match (platform.tee, platform.cloud) {
        (Tee::None, _) => Box::new(NoTee),
        // Configured files win (offline, air-gapped, pinned); else Azure's host certificate
        // service, fetched on first evidence (a failure serves evidence without a VCEK).
        (Tee::SevSnp, Cloud::Azure) => match config.vcek_path.as_deref() {
            Some(vcek) => Box::new(AzureSnp {
                vcek_der: read_der(vcek)?,
                chain_der: config
                    .vcek_chain_paths
                    .iter()
                    .map(|p| read_der(p))
                    .collect::<Result<_>>()?,
            }),
            None => Box::new(cvm_attester::tee::AzureSnpHostCerts::new(
                config.azure_certs_url.as_str(),
            )),
        },
        // GCP, AWS, self-hosted: the kernel's generic interface when it has one (6.7+), else
        // the SEV guest device.
        (Tee::SevSnp, _) if std::path::Path::new(cvm_attester::tsm::TSM_REPORT_ROOT).exists() => {
            Box::new(ConfigfsTsm::new(
                Tee::SevSnp,
                config.vcek_path.as_deref().map(read_der).transpose()?,
            ))
        }
        (Tee::SevSnp, _) => Box::new(SevGuest {
            vcek_der: config.vcek_path.as_deref().map(read_der).transpose()?,
            vmpl: 0,
        }),
        (Tee::Tdx, Cloud::Azure) => Box::new(AzureTdx {
            quote_service: cvm_attester::tee::AZURE_TD_QUOTE_URL.into(),
        }),
        (Tee::Tdx, _) => Box::new(ConfigfsTsm::new(Tee::Tdx, None)),
    })
}

/// Predicted PCRs (SHA-256, and SHA-384 when the build predicted it) from the image build's
/// measurements.json, when configured; read bounded through the shared schema.
fn image_pcrs(path: Option<&std::path::Path>) -> Result<BTreeMap<u8, GoldenPcr>> {
    use cvm_attestation::measurements::Measurements;
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Measurements::from_reader(file)
        .and_then(|document| document.golden_pcrs())
        .with_context(|| format!("{}", path.display()))
}

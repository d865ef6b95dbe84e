//! The data partition's key (docs/data-at-rest.md). The agent decides the key; opening the
//! LUKS2 volume (dm-crypt with dm-integrity) and mounting `/data` is the image's
//! `cvm-data.service`, started through `data_open_command` with the key in `data_key_file` (on
//! tmpfs, 0600, removed right after): the mount must happen in the VM's mount namespace, not in
//! the agent's sandbox.
//!
//! - `ephemeral`: a random key made here at start, used once, never stored.
//! - `pushed`: `/data` stays locked until `/unlock` brings a key (after the client verified
//!   this VM); a key that does not open the volume leaves it locked.
//! - `sealed`: a root of trust inside the TEE keeps the key across reboots
//!   (`cvm_attester::seal`); refused where the only TPM is the host's.

use cvm_attestation::evidence::Platform;
use cvm_attestation::workload::data::{key_commitment, KeySizeError};
use cvm_attestation::workload::{DataState, DataUnlock};
use cvm_attester::seal::{sealer_for, KeySealer, SealError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long opening (and on first use formatting) the volume may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(600);

/// Why `/data` could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    KeySize(#[from] KeySizeError),
    #[error("this VM's /data is {0}, not waiting for a pushed key")]
    NotPushed(&'static str),
    #[error("writing the key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running {command:?}: {source}")]
    Spawn {
        command: Vec<String>,
        source: std::io::Error,
    },
    #[error(
        "{command:?} did not open /data ({status}): a wrong key, or see the console (cvm-data)"
    )]
    Open {
        command: Vec<String>,
        status: String,
    },
    #[error("{command:?} did not finish within {OPEN_TIMEOUT:?}")]
    Timeout { command: Vec<String> },
    #[error("no randomness for the ephemeral key: {0}")]
    Random(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the sealing task stopped: {0}")]
    SealTask(String),
}

/// The TPM a sealer opens when the agent did not hand one over ([`DataVolume::with_sealer`]).
const SEAL_TCTI: &str = "device:/dev/tpmrm0";

/// The data partition as the agent sees it.
pub struct DataVolume {
    mode: DataUnlock,
    key_file: PathBuf,
    open_command: Vec<String>,
    /// `sealed` mode's root of trust; `None`: the one [`sealer_for`] picks for `platform`.
    sealer: Option<Arc<Mutex<Box<dyn KeySealer>>>>,
    /// The agent's platform and TPM; `None`: detected here, the TPM at [`SEAL_TCTI`].
    platform: Option<(Platform, String)>,
}

impl std::fmt::Debug for DataVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataVolume")
            .field("mode", &self.mode)
            .field("key_file", &self.key_file)
            .field("open_command", &self.open_command)
            .finish_non_exhaustive()
    }
}

impl DataVolume {
    pub fn new(mode: DataUnlock, key_file: PathBuf, open_command: Vec<String>) -> Self {
        let open_command = open_command
            .into_iter()
            .map(|arg| arg.replace("{mode}", mode.as_str()))
            .collect();
        Self {
            mode,
            key_file,
            open_command,
            sealer: None,
            platform: None,
        }
    }

    /// The platform (and its TPM) whose root of trust keeps a `sealed` key, as the agent knows
    /// them (configuration first); without it, `sealed` detects the platform itself.
    pub fn on_platform(mut self, platform: Platform, tcti: &str) -> Self {
        self.platform = Some((platform, tcti.to_owned()));
        self
    }

    /// The root of trust that keeps a `sealed` key (the platform's, from
    /// [`cvm_attester::seal::sealer_for`]; a test's stand-in or swtpm).
    pub fn with_sealer(mut self, sealer: Box<dyn KeySealer>) -> Self {
        self.sealer = Some(Arc::new(Mutex::new(sealer)));
        self
    }

    pub fn mode(&self) -> DataUnlock {
        self.mode
    }

    /// At start-up, before the workload is read: ephemeral opens `/data` with a fresh key;
    /// pushed stays locked; sealed opens it with the key its root of trust gives back.
    pub async fn at_start(&self) -> Result<DataState, DataError> {
        match self.mode {
            DataUnlock::Pushed => Ok(DataState::Locked),
            DataUnlock::Sealed => self.open_sealed().await,
            DataUnlock::Ephemeral => {
                let mut key = [0u8; 64];
                openssl::rand::rand_bytes(&mut key)
                    .map_err(|e| DataError::Random(e.to_string()))?;
                self.open(&key).await?;
                Ok(DataState::Ephemeral)
            }
        }
    }

    /// Opens `/data` with the key the sealing root gives back (made and sealed on first use).
    async fn open_sealed(&self) -> Result<DataState, DataError> {
        let sealer = match &self.sealer {
            Some(sealer) => Arc::clone(sealer),
            None => {
                let (platform, tcti) = self
                    .platform
                    .clone()
                    .unwrap_or_else(|| (crate::platform::detect(None, None), SEAL_TCTI.to_owned()));
                Arc::new(Mutex::new(sealer_for(platform, &tcti)?))
            }
        };
        // The TPM and /dev/sev-guest calls block.
        let (root, key) = tokio::task::spawn_blocking(move || {
            let mut sealer = sealer.lock().unwrap_or_else(|e| e.into_inner());
            sealer.key().map(|key| (sealer.root(), key))
        })
        .await
        .map_err(|e| DataError::SealTask(e.to_string()))??;
        self.open(&key).await?;
        Ok(DataState::Sealed(root))
    }

    /// Opens `/data` with a pushed key; the state to record when it did.
    pub async fn unlock(&self, key: &[u8]) -> Result<DataState, DataError> {
        if self.mode != DataUnlock::Pushed {
            return Err(DataError::NotPushed(self.mode.as_str()));
        }
        let commitment = key_commitment(key)?;
        self.open(key).await?;
        Ok(DataState::Pushed(commitment))
    }

    /// Writes the key file, runs the open command, and removes the key file whatever happened.
    async fn open(&self, key: &[u8]) -> Result<(), DataError> {
        write_key(&self.key_file, key).map_err(|source| DataError::KeyFile {
            path: self.key_file.clone(),
            source,
        })?;
        let result = run(&self.open_command).await;
        let _ = std::fs::remove_file(&self.key_file);
        result
    }
}

/// The key, 0600 in a 0700 directory, written fresh (a leftover file is replaced).
fn write_key(path: &Path, key: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(key)?;
    file.sync_all()
}

async fn run(command: &[String]) -> Result<(), DataError> {
    let spawn_error = |source| DataError::Spawn {
        command: command.to_vec(),
        source,
    };
    let (program, args) = command.split_first().ok_or_else(|| {
        spawn_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "data_open_command is empty",
        ))
    })?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(OPEN_TIMEOUT, child).await {
        Err(_) => Err(DataError::Timeout {
            command: command.to_vec(),
        }),
        Ok(Err(source)) => Err(spawn_error(source)),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(DataError::Open {
            command: command.to_vec(),
            status: status.to_string(),
        }),
    }
}

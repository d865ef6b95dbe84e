//! The data partition's key (docs/data-at-rest.md). The agent decides the key; opening the
//! LUKS2 volume (dm-crypt with dm-integrity) and mounting `/data` is the image's
//! `cvm-data.service`, started through `data_open_command` with the key in `data_key_file` (on
//! tmpfs, 0600, removed right after): the mount must happen in the VM's mount namespace, not in
//! the agent's sandbox.
//!
//! - `ephemeral`: a random key made here at start, used once, never stored.
//! - `pushed`: `/data` stays locked until `/unlock` brings a key (after the client verified
//!   this VM); a key that does not open the volume leaves it locked.

use cvm_attestation::workload::data::{key_commitment, KeySizeError};
use cvm_attestation::workload::{DataState, DataUnlock};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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
}

/// The data partition as the agent sees it.
#[derive(Debug)]
pub struct DataVolume {
    mode: DataUnlock,
    key_file: PathBuf,
    open_command: Vec<String>,
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
        }
    }

    pub fn mode(&self) -> DataUnlock {
        self.mode
    }

    /// At start-up, before the workload is read: ephemeral opens `/data` with a fresh key;
    /// pushed stays locked.
    pub async fn at_start(&self) -> Result<DataState, DataError> {
        match self.mode {
            DataUnlock::Pushed => Ok(DataState::Locked),
            DataUnlock::Ephemeral => {
                let mut key = [0u8; 64];
                openssl::rand::rand_bytes(&mut key)
                    .map_err(|e| DataError::Random(e.to_string()))?;
                self.open(&key).await?;
                Ok(DataState::Ephemeral)
            }
        }
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

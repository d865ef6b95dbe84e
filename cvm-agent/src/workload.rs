//! The workload's life: measure into PCR 23, then run; on update, stage, validate, measure, swap,
//! run, and roll back on any failure. PCR 23 is extended once per measured workload: the log is
//! persisted under the state directory (tmpfs, gone at reboot, like the PCR) and an agent restart
//! reuses it when it still explains the PCR. Immediately before every `compose up` the folder is
//! measured again and must equal the last generation in the log, so nothing changed behind the
//! agent's back ever starts unmeasured.
//!
//! An image may carry no workload (nothing seeded, nothing uploaded yet): the agent then measures
//! an empty generation (the token's commitment and a separator), runs nothing, serves, and waits
//! for its first `/update-workload`. A compose file that appears later without being uploaded is
//! refused like any other unmeasured change.

use crate::audit;
use crate::data::DataVolume;
use crate::engine::Engine;
use crate::tpm_actor::TpmActor;
use anyhow::{bail, Context, Result};
use cvm_attestation::golden::{AllowedWorkload, GoldenWorkload};
use cvm_attestation::workload::folder::COMPOSE_FILE;
use cvm_attestation::workload::{
    differences, replay, DataState, EventKind, TokenCommitment, WorkloadEvent, WorkloadFolder,
    WorkloadLog,
};
use cvm_attestation::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::sync::{Mutex, RwLock};

/// Compose project name of the workload.
pub const PROJECT: &str = "cvm-workload";

/// What is measured and running now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// Every measurement since boot, as extended into PCR 23.
    pub log: WorkloadLog,
    /// The events of the running workload (the last generation).
    pub current: Vec<WorkloadEvent>,
    pub image_ids: BTreeMap<String, String>,
}

impl Measured {
    /// The last generation of the log: what may run now.
    fn last_generation(&self) -> Result<&[WorkloadEvent]> {
        let generations = self.log.generations()?;
        generations
            .last()
            .copied()
            .context("the workload log has no measurement")
    }

    /// What this VM should match: the running measurement, every earlier one allowed (it did
    /// run here, and PCR 23 shows it).
    pub fn golden_workload(&self) -> GoldenWorkload {
        let mut golden = GoldenWorkload::new(self.current.clone());
        let current = replay(&self.current);
        for generation in self.log.generations().unwrap_or_default() {
            let digest = replay(generation);
            let known = golden.allowed.iter().any(|a| a.digest() == digest);
            if digest != current && !known {
                golden
                    .allowed
                    .push(AllowedWorkload::Events(generation.to_vec()));
            }
        }
        golden
    }
}

/// The folder about to run is not the workload last measured into PCR 23.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to run {}: it is not the workload last measured into PCR 23: {reason}",
    dir.display()
)]
pub struct Unmeasured {
    pub dir: PathBuf,
    pub reason: String,
}

/// An update whose new workload (`new`, its generation's digest) was measured but did not
/// start: the previous one was brought back and runs again. The context of the start error.
#[derive(Debug, thiserror::Error)]
#[error("the new workload {new} did not start; the previous one runs again")]
pub struct RolledBack {
    pub new: Sha256Digest,
}

/// An update whose new workload did not start, and whose rollback failed too: both errors.
#[derive(Debug, thiserror::Error)]
#[error(
    "the new workload {new} did not start: {error}; bringing the previous workload back failed \
     too: {rollback}; no workload may be running"
)]
pub struct RollbackFailed {
    pub new: Sha256Digest,
    pub error: String,
    pub rollback: String,
}

/// An update while `/data` waits for its pushed key.
#[derive(Debug, thiserror::Error)]
#[error("/data is locked: unlock it first (cvm-cli unlock)")]
pub struct Locked;

/// `/unlock` on an image whose agent does not decide the data key.
#[derive(Debug, thiserror::Error)]
#[error("this VM's agent does not manage /data (no data_unlock in its configuration)")]
pub struct NoDataKey;

/// Owns the workload folder and the measurement state.
pub struct Workloads {
    dir: PathBuf,
    state_dir: PathBuf,
    /// `None` in measure-only mode.
    engine: Option<Engine>,
    tpm: TpmActor,
    /// The API bearer token (trimmed), committed to in every measurement.
    token: Option<String>,
    start_workload: bool,
    measured: RwLock<Measured>,
    /// One update (or start) at a time.
    busy: Mutex<()>,
    /// Why the workload folder was not started when the agent started, if it was refused.
    refused: RwLock<Option<String>>,
    /// The data partition, when the agent decides its key (`data_unlock`).
    data: Option<DataVolume>,
}

/// What `/unlock` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// `/data` opened with the key, the workload on it measured and started.
    Now,
    /// It was open already (the key is not checked again; nothing changed).
    Already,
}

/// Everything a measurement commits to besides the folder.
#[derive(Clone, Copy)]
struct Commitments<'a> {
    token: Option<&'a TokenCommitment>,
    data: Option<DataState>,
}

/// How start-up found PCR 23.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// PCR 23 was zero: the workload was measured now.
    Measured,
    /// The agent restarted: the persisted log still explains PCR 23, nothing was extended.
    Restored,
}

impl Workloads {
    /// Measures (or restores) and starts the workload in `dir`. A restored measurement whose
    /// folder changed since is not started (see [`Workloads::refused`]); the agent still serves.
    pub async fn start(
        dir: PathBuf,
        state_dir: PathBuf,
        engine: Option<Engine>,
        tpm: TpmActor,
        token: Option<String>,
        start_workload: bool,
        data: Option<DataVolume>,
    ) -> Result<(Self, StartKind)> {
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let pcr = tpm.read_pcr23().await?;
        let persisted = read_state(&state_dir)?;
        let (measured, kind) = match persisted {
            Some(state) if state.log.replay().0 == pcr => (state, StartKind::Restored),
            Some(state) => bail!(
                "PCR 23 is {} but the persisted log replays to {}: refusing to run an unexplained workload",
                hex::encode(pcr),
                state.log.replay()
            ),
            None if pcr == [0; 32] => {
                let salt = token.as_ref().map(|_| fresh_salt()).transpose()?;
                let commitment = commit(token.as_deref(), salt);
                let data_state = match &data {
                    Some(volume) => Some(volume.at_start().await.context("opening /data")?),
                    None => None,
                };
                let commitments = Commitments {
                    token: commitment.as_ref(),
                    data: data_state,
                };
                let (events, image_ids) = if data_state == Some(DataState::Locked) {
                    // Nothing of /data is readable: an empty generation until /unlock.
                    (empty_events(commitments), BTreeMap::new())
                } else {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    prepare(engine.as_ref(), &dir, commitments, Empty::Allowed).await?
                };
                let mut log = WorkloadLog::from_events(events.clone());
                log.rtmr3_failure = tpm.extend_workload(events.clone()).await?.rtmr3_failure;
                let state = Measured {
                    log,
                    current: events,
                    image_ids,
                };
                write_state(&state_dir, &state)?;
                (state, StartKind::Measured)
            }
            None => bail!(
                "PCR 23 is {} but this agent has no log for it (was it extended by something else?)",
                hex::encode(pcr)
            ),
        };
        let start_workload = start_workload && engine.is_some();
        let workloads = Self {
            dir,
            state_dir,
            engine,
            tpm,
            token,
            start_workload,
            measured: RwLock::new(measured),
            busy: Mutex::new(()),
            refused: RwLock::new(None),
            data,
        };
        if start_workload {
            if let Err(error) = workloads.run(&workloads.dir).await {
                let Some(unmeasured) = error.downcast_ref::<Unmeasured>() else {
                    return Err(error);
                };
                tracing::error!(dir = %workloads.dir.display(), "{unmeasured}");
                *workloads.refused.write().await = Some(unmeasured.to_string());
            }
        }
        Ok((workloads, kind))
    }

    /// Why the agent did not start its workload folder at start-up, when it refused to: the
    /// folder was not the last measured workload. Containers already running are left alone.
    pub async fn refused(&self) -> Option<String> {
        self.refused.read().await.clone()
    }

    pub async fn measured(&self) -> Measured {
        self.measured.read().await.clone()
    }

    /// The container engine, unless the agent runs measure-only.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// Replaces the workload by the one staged in `staged` (a directory beside the workload
    /// folder). On any failure the previous workload runs again and PCR 23 says so.
    pub async fn update(&self, staged: &Path) -> Result<Measured> {
        let _guard = self.busy.lock().await;
        // 1. Validate and resolve everything before touching the running workload.
        let commitment = self.token_commitment().await?;
        let data = self.data_state().await;
        if data == Some(DataState::Locked) {
            bail!(Locked);
        }
        let commitments = Commitments {
            token: commitment.as_ref(),
            data,
        };
        let (events, image_ids) =
            prepare(self.engine.as_ref(), staged, commitments, Empty::Refused).await?;
        // 2. Measure before running.
        let new = replay(&events);
        self.extend(events, image_ids).await?;
        // 3. Stop the old one, swap folders, start the new one. On any failure from here on the
        //    previous one comes back, measured again: the log's last generation is what runs.
        let previous = self.dir.with_extension("previous");
        let _ = std::fs::remove_dir_all(&previous);
        let Err(error) = self.swap_in(staged, &previous).await else {
            *self.refused.write().await = None;
            return Ok(self.measured().await);
        };
        match self.roll_back(&previous, commitments).await {
            Ok(()) => {
                audit::rollback(&new, "restored", &error, None);
                Err(error.context(RolledBack { new }))
            }
            Err(rollback) => {
                let rollback = format!("{rollback:#}");
                audit::rollback(&new, "failed", &error, Some(&rollback));
                let error = format!("{error:#}");
                Err(RollbackFailed {
                    new,
                    error,
                    rollback,
                }
                .into())
            }
        }
    }

    /// Stops the running workload, moves its folder to `previous` and the staged one in its
    /// place, and starts it.
    async fn swap_in(&self, staged: &Path, previous: &Path) -> Result<()> {
        if self.start_workload {
            self.compose_down().await?;
        }
        rename(&self.dir, previous)?;
        rename(staged, &self.dir)?;
        if self.start_workload {
            self.run(&self.dir).await?;
        }
        Ok(())
    }

    /// Brings the previous workload back after a failed [`Self::swap_in`], from wherever that
    /// stopped: the new folder goes to `.failed`, the previous one returns, is measured again (a
    /// new generation) and started.
    async fn roll_back(&self, previous: &Path, commitments: Commitments<'_>) -> Result<()> {
        if self.start_workload {
            let _ = self.compose_down().await;
        }
        if previous.exists() {
            if self.dir.exists() {
                let failed = self.dir.with_extension("failed");
                let _ = std::fs::remove_dir_all(&failed);
                rename(&self.dir, &failed)?;
            }
            rename(previous, &self.dir)?;
        }
        let (events, image_ids) =
            prepare(self.engine.as_ref(), &self.dir, commitments, Empty::Allowed).await?;
        self.extend(events, image_ids).await?;
        if self.start_workload {
            self.run(&self.dir).await?;
        }
        *self.refused.write().await = None;
        Ok(())
    }

    async fn extend(
        &self,
        events: Vec<WorkloadEvent>,
        image_ids: BTreeMap<String, String>,
    ) -> Result<()> {
        let mut measured = self.measured.write().await;
        let extended = self.tpm.extend_workload(events.clone()).await?;
        measured.log.events.extend(events.iter().cloned());
        // The first RTMR3 failure stays: RTMR3 does not follow the log from then on.
        if measured.log.rtmr3_failure.is_none() {
            measured.log.rtmr3_failure = extended.rtmr3_failure;
        }
        measured.current = events;
        measured.image_ids = image_ids;
        if measured.log.replay().0 != extended.pcr23 {
            bail!(
                "PCR 23 no longer matches the log after extending: another writer extends PCR 23"
            );
        }
        write_state(&self.state_dir, &measured)
    }

    /// How the running measurement says `/data` is protected (`None`: not the agent's business).
    pub async fn data_state(&self) -> Option<DataState> {
        self.measured
            .read()
            .await
            .current
            .iter()
            .find_map(DataState::of)
    }

    /// Opens a locked `/data` with a pushed key, then measures and starts the workload on it (a
    /// new generation recording the key's commitment). A key that does not open the volume
    /// leaves it locked; a second unlock changes nothing.
    pub async fn unlock(&self, key: &[u8]) -> Result<Unlocked> {
        let _guard = self.busy.lock().await;
        let volume = self.data.as_ref().ok_or(NoDataKey)?;
        match self.data_state().await {
            Some(DataState::Locked) => {}
            Some(DataState::Pushed(_)) => return Ok(Unlocked::Already),
            _ => return Err(crate::data::DataError::NotPushed(volume.mode().as_str()).into()),
        }
        let state = volume.unlock(key).await?;
        let commitment = self.token_commitment().await?;
        let commitments = Commitments {
            token: commitment.as_ref(),
            data: Some(state),
        };
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let (events, image_ids) =
            prepare(self.engine.as_ref(), &self.dir, commitments, Empty::Allowed).await?;
        self.extend(events, image_ids).await?;
        if self.start_workload {
            self.run(&self.dir).await?;
        }
        Ok(Unlocked::Now)
    }

    /// The token's commitment for a new measurement: the salt of this boot's first api-token
    /// event, so the same workload always measures the same (a fresh salt when there is none).
    async fn token_commitment(&self) -> Result<Option<TokenCommitment>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let salt = match TokenCommitment::first_salt(&self.measured.read().await.log.events) {
            Some(salt) => salt,
            None => fresh_salt()?,
        };
        Ok(Some(TokenCommitment::new(salt, token)))
    }

    /// Runs the compose file in `dir` with every image pinned to its measured ID, after
    /// measuring the folder again: it must be exactly the last generation in the log, or
    /// [`Unmeasured`] is returned and nothing is started.
    async fn run(&self, dir: &Path) -> Result<()> {
        let Some((folder, image_ids)) = self.remeasure(dir).await.map_err(|reason| Unmeasured {
            dir: dir.to_owned(),
            reason,
        })?
        else {
            tracing::info!(dir = %dir.display(), "no workload yet: waiting for /update-workload");
            return Ok(());
        };
        let pinned = folder.compose.with_images(&image_ids)?;
        let file = self.state_dir.join("docker-compose.pinned.yml");
        std::fs::write(&file, pinned).with_context(|| format!("writing {}", file.display()))?;
        match &self.engine {
            Some(engine) => {
                engine
                    .compose(PROJECT, &file, dir, &["up", "-d", "--remove-orphans"])
                    .await
            }
            None => Ok(()),
        }
    }

    /// Reads `dir` and compares its events with the last measured generation, whose image
    /// events give the IDs (so the log, which PCR 23 vouches for, decides what is pinned).
    /// Returns the folder as read (the compose file to pin comes from this very read), `None`
    /// when the measured generation is empty and the folder has no compose file, or why it is not
    /// the measured workload.
    async fn remeasure(
        &self,
        dir: &Path,
    ) -> std::result::Result<Option<(WorkloadFolder, BTreeMap<String, String>)>, String> {
        let measured = self.measured.read().await;
        let last = measured.last_generation().map_err(|e| format!("{e:#}"))?;
        let measured_empty = !last.iter().any(|e| e.kind == EventKind::ComposeFile);
        match (measured_empty, dir.join(COMPOSE_FILE).exists()) {
            (true, false) => return Ok(None),
            (true, true) => {
                return Err(format!(
                    "the measured workload is empty, but {COMPOSE_FILE} appeared in the folder"
                ))
            }
            _ => {}
        }
        let image_ids: BTreeMap<String, String> = last
            .iter()
            .filter(|event| event.kind == EventKind::Image)
            .filter_map(|event| Some((event.name.clone(), event.payload.clone()?)))
            .collect();
        let salt = TokenCommitment::first_salt(last.iter());
        let commitment = commit(self.token.as_deref(), Some(salt.unwrap_or([0; 32])));
        let folder = WorkloadFolder::read(dir).map_err(|e| e.to_string())?;
        let data = last.iter().find_map(DataState::of);
        let events = folder
            .events_with_data(&image_ids, commitment.as_ref(), data)
            .map_err(|e| e.to_string())?;
        if replay(&events) != replay(last) {
            return Err(differences(last, &events).join("; "));
        }
        Ok(Some((folder, image_ids)))
    }

    async fn compose_down(&self) -> Result<()> {
        let file = self.state_dir.join("docker-compose.pinned.yml");
        match &self.engine {
            // Nothing ran yet (an empty workload): nothing to stop.
            Some(_) if !file.exists() => Ok(()),
            Some(engine) => {
                engine
                    .compose(PROJECT, &file, &self.dir, &["down", "--timeout", "10"])
                    .await
            }
            None => Ok(()),
        }
    }
}

/// Whether a folder without a compose file is an empty workload (the agent's own folder at
/// start-up or in a rollback) or an error (an upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Empty {
    Allowed,
    Refused,
}

/// Loads archives, resolves image IDs, and computes the events of the workload in `dir`. Without
/// an engine (measure-only) the IDs come from the archives alone.
async fn prepare(
    engine: Option<&Engine>,
    dir: &Path,
    commitments: Commitments<'_>,
    empty: Empty,
) -> Result<(Vec<WorkloadEvent>, BTreeMap<String, String>)> {
    if empty == Empty::Allowed && !dir.join(COMPOSE_FILE).exists() {
        tracing::warn!(dir = %dir.display(), "no {COMPOSE_FILE}: measuring an empty workload");
        return Ok((empty_events(commitments), BTreeMap::new()));
    }
    let folder =
        WorkloadFolder::read(dir).with_context(|| format!("workload {}", dir.display()))?;
    let image_ids = match engine {
        Some(engine) => {
            engine.load_archives(dir).await?;
            engine.resolve_images(folder.image_references()).await?
        }
        None => {
            let archived = crate::engine::archive_ids(dir)?;
            folder
                .image_references()
                .into_iter()
                .map(|reference| {
                    let id = archived.get(&reference).cloned().with_context(|| {
                        format!(
                            "measure-only: image {reference} has no archive in the workload folder"
                        )
                    })?;
                    Ok((reference, id))
                })
                .collect::<Result<_>>()?
        }
    };
    let events = folder.events_with_data(&image_ids, commitments.token, commitments.data)?;
    Ok((events, image_ids))
}

/// A generation in which nothing runs: the commitments, then the separator.
fn empty_events(commitments: Commitments<'_>) -> Vec<WorkloadEvent> {
    let token = commitments.token.map(TokenCommitment::event);
    let data = commitments.data.map(DataState::event);
    token
        .into_iter()
        .chain(data)
        .chain([WorkloadEvent::separator()])
        .collect()
}

/// The token's commitment under `salt`, when there is a token.
fn commit(token: Option<&str>, salt: Option<[u8; 32]>) -> Option<TokenCommitment> {
    Some(TokenCommitment::new(salt?, token?))
}

/// A fresh random salt for the token's commitment (once per boot).
fn fresh_salt() -> Result<[u8; 32]> {
    let mut salt = [0u8; 32];
    openssl::rand::rand_bytes(&mut salt).context("drawing a random salt")?;
    Ok(salt)
}

/// `std::fs::rename`, naming both paths in its error.
fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("workload-state.json")
}

fn read_state(state_dir: &Path) -> Result<Option<Measured>> {
    let path = state_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state: Measured = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            state
                .log
                .generations()
                .with_context(|| format!("{}", path.display()))?;
            debug_assert_eq!(replay(state.log.events.iter()), state.log.replay());
            Ok(Some(state))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a log.
fn write_state(state_dir: &Path, state: &Measured) -> Result<()> {
    let path = state_path(state_dir);
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec(state)?)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

//! The workload's life: measure into PCR 23, then run; on update, stage, validate, measure, swap,
//! run, and roll back on any failure. PCR 23 is extended once per measured workload: the log is
//! persisted under the state directory (tmpfs, gone at reboot, like the PCR) and an agent restart
//! reuses it when it still explains the PCR. Immediately before every `compose up` the folder is
//! measured again and must equal the last generation in the log, so nothing changed behind the
//! agent's back ever starts unmeasured.
//!
//! **Crash safety.** Every extend is written ahead: the events go to the persisted state as
//! `pending` before the TPM sees them, and into the log once it has. A restart whose PCR 23 shows
//! the log plus part of the pending events (a crash, or a TPM that failed, in between) extends the
//! rest and logs them all; one that shows the log alone drops them; anything else is refused. An
//! update also marks itself `in_flight` from its extend until its workload runs (or its rollback
//! does): a restart that finds the mark puts the folder the log does not name back (`.previous`
//! when the crash came between the renames), measures it again if it is not the last generation,
//! and starts it. So after any crash the workload that runs is the log's last generation.
//!
//! An image may carry no workload (nothing seeded, nothing uploaded yet): the agent then measures
//! an empty generation (the token's commitment and a separator), runs nothing, serves, and waits
//! for its first `/update-workload`. A compose file that appears later without being uploaded is
//! refused like any other unmeasured change.

use crate::audit;
use crate::data::DataVolume;
use crate::engine::Engine;
use crate::fault::{self, Step};
use crate::tpm_actor::TpmActor;
use anyhow::{bail, ensure, Context, Result};
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
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{watch, Mutex, RwLock};

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

/// What is written to `state_dir`: the measurement, and what a restart needs to finish an extend
/// or an update that a crash cut short (module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    #[serde(flatten)]
    measured: Measured,
    /// Events sent to the TPM but not yet in the log, with their image IDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
    /// An update (or its rollback) has extended PCR 23 and its workload does not run yet.
    #[serde(default)]
    in_flight: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    events: Vec<WorkloadEvent>,
    image_ids: BTreeMap<String, String>,
}

/// The TPM failed during an extend: how much of it PCR 23 got is unknown, so the agent stops
/// (and a restart reconciles the log with PCR 23 from the written-ahead events).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the TPM failed while extending PCR 23: {0}; the agent stops so that its restart \
     reconciles the log with PCR 23"
)]
pub struct TpmFailed(pub String);

/// What a failed update's extend did to PCR 23, for its audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pcr23 {
    /// Nothing reached the TPM (the write-ahead failed first).
    Untouched,
    /// The TPM failed mid-extend: PCR 23 may hold part of it; the restart reconciles the log.
    PendingReconcile,
    /// PCR 23 and the in-memory log were extended, but persisting or checking the log failed.
    Extended,
}

impl Pcr23 {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untouched => "untouched",
            Self::PendingReconcile => "pending-reconcile",
            Self::Extended => "extended",
        }
    }
}

/// An update whose measurement of the new workload (`new`, its generation's digest) failed: the
/// context of the extend error, so the audit line can say how far PCR 23 got.
#[derive(Debug, thiserror::Error)]
#[error("measuring the new workload {new}")]
pub struct MeasureFailed {
    pub new: Sha256Digest,
    pub pcr23: Pcr23,
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
    /// An update is between its extend and a running workload (persisted with every write).
    in_flight: AtomicBool,
    /// Set once the TPM failed during an extend: the agent must stop.
    failed: watch::Sender<Option<TpmFailed>>,
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
        remove_staging(&dir);
        let pcr = tpm.read_pcr23().await?;
        let (persisted, kind) = match read_state(&state_dir)? {
            Some(state) => (
                reconcile(&tpm, &state_dir, state, pcr).await?,
                StartKind::Restored,
            ),
            None if pcr == [0; 32] => {
                let (events, image_ids) =
                    first_measurement(&dir, engine.as_ref(), token.as_deref(), data.as_ref())
                        .await?;
                let mut measured = Measured {
                    log: WorkloadLog::default(),
                    current: Vec::new(),
                    image_ids: BTreeMap::new(),
                };
                let extend = Extend {
                    tpm: &tpm,
                    state_dir: &state_dir,
                    in_flight: false,
                    faults: false,
                };
                extend.logged(&mut measured, events, image_ids).await?;
                let persisted = Persisted {
                    measured,
                    pending: None,
                    in_flight: false,
                };
                (persisted, StartKind::Measured)
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
            measured: RwLock::new(persisted.measured),
            busy: Mutex::new(()),
            refused: RwLock::new(None),
            data,
            in_flight: AtomicBool::new(persisted.in_flight),
            failed: watch::channel(None).0,
        };
        if persisted.in_flight {
            workloads.finish_interrupted().await?;
        }
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
        fault::point(Step::Validate);
        // 2. Measure before running; from here until the workload runs, a restart finishes this.
        let new = replay(&events);
        self.in_flight.store(true, Ordering::SeqCst);
        let logged = self.measured.read().await.log.events.len();
        if let Err(error) = self.extend(events, image_ids).await {
            let pcr23 = if error.is::<TpmFailed>() {
                Pcr23::PendingReconcile
            } else if self.measured.read().await.log.events.len() > logged {
                Pcr23::Extended
            } else {
                Pcr23::Untouched
            };
            match pcr23 {
                // PCR 23 and the log in memory name the new workload while the previous one
                // runs, and the log is not saved: evidence stops and the agent exits, and its
                // restart finishes the update as after a crash (the running folder is measured
                // again), so the log's last generation is what runs.
                Pcr23::Extended => {
                    let failure = TpmFailed(format!(
                        "PCR 23 was extended for an update whose log was not saved ({error:#}): \
                         the agent stops; its restart measures the running workload again"
                    ));
                    tracing::error!("{failure}");
                    self.failed.send_replace(Some(failure));
                }
                Pcr23::Untouched => self.in_flight.store(false, Ordering::SeqCst),
                Pcr23::PendingReconcile => {}
            }
            return Err(error.context(MeasureFailed { new, pcr23 }));
        }
        // 3. Stop the old one, swap folders, start the new one. On any failure from here on the
        //    previous one comes back, measured again: the log's last generation is what runs.
        let previous = self.dir.with_extension("previous");
        let _ = std::fs::remove_dir_all(&previous);
        let Err(error) = self.swap_in(staged, &previous).await else {
            *self.refused.write().await = None;
            self.settle().await?;
            return Ok(self.measured().await);
        };
        match self.roll_back(&previous, commitments).await {
            Ok(()) => {
                self.settle().await?;
                audit::rollback(&new, &error, None);
                Err(error.context(RolledBack { new }))
            }
            Err(rollback) => {
                let rollback = format!("{rollback:#}");
                audit::rollback(&new, &error, Some(&rollback));
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
        fault::point(Step::Swap);
        rename(staged, &self.dir)?;
        if self.start_workload {
            self.run(&self.dir).await?;
        }
        fault::point(Step::Start);
        Ok(())
    }

    /// The update (or its rollback) is over and its workload runs: a restart has nothing to
    /// finish.
    async fn settle(&self) -> Result<()> {
        self.in_flight.store(false, Ordering::SeqCst);
        write_state(&self.state_dir, &*self.measured.read().await, None, false)
    }

    /// After a crash in an update (module docs): the folder comes back from `.previous` if the
    /// crash came between the renames; unless it is the log's last generation it is measured
    /// again (the rollback the crash cut short), so what starts next is what PCR 23 shows last.
    async fn finish_interrupted(&self) -> Result<()> {
        let previous = self.dir.with_extension("previous");
        if !self.dir.exists() && previous.exists() {
            tracing::warn!(dir = %self.dir.display(), "an update was cut short between its renames: the previous workload folder comes back");
            rename(&previous, &self.dir)?;
        }
        let commitment = self.token_commitment().await?;
        let commitments = Commitments {
            token: commitment.as_ref(),
            data: self.data_state().await,
        };
        let cut_short = replay(self.measured.read().await.last_generation()?);
        let reason = match self.remeasure(&self.dir).await {
            // The new workload is in place: start it; if it does not start, roll back as the
            // update would have.
            Ok(_) if self.start_workload => match self.run(&self.dir).await {
                Err(error) if previous.exists() => {
                    tracing::warn!("the new workload of an interrupted update did not start ({error:#}): rolling back");
                    self.roll_back(&previous, commitments).await?;
                    let cause = error.context("the agent restarted in the middle of an update");
                    audit::rollback(&cut_short, &cause, None);
                    return self.settle().await;
                }
                other => return other.and(self.settle().await),
            },
            Ok(_) => return self.settle().await,
            Err(reason) => reason,
        };
        // The folder is the previous workload (never moved, or just moved back).
        tracing::warn!(dir = %self.dir.display(), "an update was cut short before its workload ran ({reason}): the previous workload is measured again and started");
        let (events, image_ids) =
            prepare(self.engine.as_ref(), &self.dir, commitments, Empty::Allowed).await?;
        self.extend(events, image_ids).await?;
        let cause = anyhow::anyhow!("the agent restarted in the middle of an update: {reason}");
        audit::rollback(&cut_short, &cause, None);
        self.settle().await
    }

    /// Resolves once the TPM failed during an extend ([`TpmFailed`]): the agent must stop.
    pub async fn failed(&self) -> TpmFailed {
        let mut failed = self.failed.subscribe();
        if let Ok(failure) = failed.wait_for(Option::is_some).await {
            if let Some(failure) = failure.as_ref() {
                return failure.clone();
            }
        }
        // The sender lives as long as `self`: never reached.
        std::future::pending().await
    }

    /// Whether the TPM failed during an extend (evidence is then refused until the restart).
    pub fn has_failed(&self) -> bool {
        self.failed.borrow().is_some()
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
                fault::point(Step::Rollback);
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

    /// Extends and logs `events` (written ahead, module docs). A TPM failure is [`TpmFailed`]
    /// and stops the agent.
    async fn extend(
        &self,
        events: Vec<WorkloadEvent>,
        image_ids: BTreeMap<String, String>,
    ) -> Result<()> {
        let mut measured = self.measured.write().await;
        let extend = Extend {
            tpm: &self.tpm,
            state_dir: &self.state_dir,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            faults: true,
        };
        let result = extend.logged(&mut measured, events, image_ids).await;
        if let Some(failure) = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<TpmFailed>())
        {
            tracing::error!("{failure}");
            self.failed.send_replace(Some(failure.clone()));
        }
        result
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

/// Reads the persisted state. A file that does not parse, or whose log is not whole
/// generations, is an error: the agent never serves a log it cannot stand behind.
fn read_state(state_dir: &Path) -> Result<Option<Persisted>> {
    let path = state_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: Persisted = serde_json::from_slice(&bytes)
        .with_context(|| format!("the persisted workload log {} is corrupt", path.display()))?;
    state
        .measured
        .log
        .generations()
        .with_context(|| format!("the persisted workload log {}", path.display()))?;
    Ok(Some(state))
}

/// Written to a temporary file and renamed, so a crash never leaves half a log.
fn write_state(
    state_dir: &Path,
    measured: &Measured,
    pending: Option<&Pending>,
    in_flight: bool,
) -> Result<()> {
    #[derive(Serialize)]
    struct View<'a> {
        #[serde(flatten)]
        measured: &'a Measured,
        #[serde(skip_serializing_if = "Option::is_none")]
        pending: Option<&'a Pending>,
        in_flight: bool,
    }
    let view = View {
        measured,
        pending,
        in_flight,
    };
    let path = state_path(state_dir);
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec(&view)?)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

/// How [`Extend::logged`] extends.
struct Extend<'a> {
    tpm: &'a TpmActor,
    state_dir: &'a Path,
    /// Persisted with every write (an update in flight).
    in_flight: bool,
    /// Honour the fail-points (updates, rollbacks, unlocks; never the first measurement).
    faults: bool,
}

impl Extend<'_> {
    /// Extends `events` into PCR 23 and logs them in `measured`, written ahead: the persisted
    /// state names them as pending before the TPM sees them.
    async fn logged(
        &self,
        measured: &mut Measured,
        events: Vec<WorkloadEvent>,
        image_ids: BTreeMap<String, String>,
    ) -> Result<()> {
        let pending = Pending { events, image_ids };
        write_state(self.state_dir, measured, Some(&pending), self.in_flight)?;
        let Pending { events, image_ids } = pending;
        let extended = match self.faults {
            true => self.tpm.extend_update(events.clone()).await,
            false => self.tpm.extend_workload(events.clone()).await,
        }
        .map_err(|e| TpmFailed(format!("{e:#}")))?;
        if self.faults {
            fault::point(Step::Measure);
        }
        let saved = match self.faults {
            true => fault::io_error(Step::SaveLog),
            false => Ok(()),
        };
        measured.log.events.extend(events.iter().cloned());
        // The first RTMR3 failure stays: RTMR3 does not follow the log from then on.
        if measured.log.rtmr3_failure.is_none() {
            measured.log.rtmr3_failure = extended.rtmr3_failure;
        }
        measured.current = events;
        measured.image_ids = image_ids;
        ensure!(
            measured.log.replay().0 == extended.pcr23,
            "PCR 23 no longer matches the log after extending: another writer extends PCR 23"
        );
        saved.context("saving the workload log")?;
        write_state(self.state_dir, measured, None, self.in_flight)
    }
}

/// Brings a persisted state in line with PCR 23 after a restart: a log that explains it is used
/// as it is; one that explains it with the first pending events added (a crash or a TPM failure
/// during an extend) gets the rest of them extended and all of them logged. Anything else is
/// refused: the agent never serves a log that does not replay to PCR 23.
async fn reconcile(
    tpm: &TpmActor,
    state_dir: &Path,
    state: Persisted,
    pcr: [u8; 32],
) -> Result<Persisted> {
    let Persisted {
        mut measured,
        pending,
        in_flight,
    } = state;
    let logged = measured.log.replay();
    let unexplained =
        || {
            anyhow::anyhow!(
            "PCR 23 is {} but the persisted log replays to {logged}{}: refusing to serve evidence \
             or run an unexplained workload",
            hex::encode(pcr),
            if pending.is_some() { " (also with any part of the interrupted extend)" } else { "" },
        )
        };
    let Some(Pending { events, image_ids }) = pending.clone() else {
        if logged.0 != pcr {
            return Err(unexplained());
        }
        return Ok(Persisted {
            measured,
            pending: None,
            in_flight,
        });
    };
    let shown = (0..=events.len()).find(|&count| {
        let mut log = measured.log.clone();
        log.events.extend(events[..count].iter().cloned());
        log.replay().0 == pcr
    });
    let Some(shown) = shown else {
        return Err(unexplained());
    };
    let extend = Extend {
        tpm,
        state_dir,
        in_flight,
        faults: false,
    };
    if shown == 0 {
        tracing::warn!("an extend was cut short before it reached PCR 23: dropping it");
    } else {
        tracing::warn!(
            shown,
            of = events.len(),
            "an extend was cut short: PCR 23 shows part of it; extending the rest and logging it"
        );
        measured.log.events.extend(events[..shown].iter().cloned());
        extend
            .logged(&mut measured, events[shown..].to_vec(), image_ids)
            .await?;
        measured.current = events;
    }
    write_state(state_dir, &measured, None, in_flight)?;
    Ok(Persisted {
        measured,
        pending: None,
        in_flight,
    })
}

/// The events of the first measurement of a boot (PCR 23 still zero), with a fresh salt for the
/// token's commitment; an empty generation while `/data` waits for its key.
async fn first_measurement(
    dir: &Path,
    engine: Option<&Engine>,
    token: Option<&str>,
    data: Option<&DataVolume>,
) -> Result<(Vec<WorkloadEvent>, BTreeMap<String, String>)> {
    let salt = token.map(|_| fresh_salt()).transpose()?;
    let commitment = commit(token, salt);
    let data_state = match data {
        Some(volume) => Some(volume.at_start().await.context("opening /data")?),
        None => None,
    };
    let commitments = Commitments {
        token: commitment.as_ref(),
        data: data_state,
    };
    if data_state == Some(DataState::Locked) {
        // Nothing of /data is readable: an empty generation until /unlock.
        return Ok((empty_events(commitments), BTreeMap::new()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    prepare(engine, dir, commitments, Empty::Allowed).await
}

/// Removes staging folders an update left when the agent was stopped in the middle of it (none
/// runs at start-up).
fn remove_staging(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.staging-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::warn!(path = %entry.path().display(), "removing an interrupted update's staging folder");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), "could not remove it: {e}");
            }
        }
    }
}

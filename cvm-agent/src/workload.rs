//! The workload's life: measure into PCR 23, then run; on update, stage, validate, measure, swap,
//! run, and roll back on any failure. PCR 23 is extended once per measured workload: the log is
//! persisted under the state directory (tmpfs, gone at reboot, like the PCR) and an agent restart
//! reuses it when it still explains the PCR.

use crate::engine::Engine;
use crate::tpm_actor::TpmActor;
use anyhow::{bail, Context, Result};
use cvm_attestation::workload::{replay, WorkloadEvent, WorkloadFolder, WorkloadLog};
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

/// Owns the workload folder and the measurement state.
pub struct Workloads {
    dir: PathBuf,
    state_dir: PathBuf,
    /// `None` in measure-only mode.
    engine: Option<Engine>,
    tpm: TpmActor,
    token_hash: Option<Sha256Digest>,
    start_workload: bool,
    measured: RwLock<Measured>,
    /// One update (or start) at a time.
    busy: Mutex<()>,
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
    /// Measures (or restores) and starts the workload in `dir`.
    pub async fn start(
        dir: PathBuf,
        state_dir: PathBuf,
        engine: Option<Engine>,
        tpm: TpmActor,
        token_hash: Option<Sha256Digest>,
        start_workload: bool,
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
                let (events, image_ids) = prepare(engine.as_ref(), &dir, token_hash).await?;
                let log = WorkloadLog::from_events(events.clone());
                tpm.extend_workload(events.clone()).await?;
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
            token_hash,
            start_workload,
            measured: RwLock::new(measured),
            busy: Mutex::new(()),
        };
        if start_workload {
            let image_ids = workloads.measured.read().await.image_ids.clone();
            workloads.run(&workloads.dir, &image_ids).await?;
        }
        Ok((workloads, kind))
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
        let (events, image_ids) = prepare(self.engine.as_ref(), staged, self.token_hash).await?;
        // 2. Measure before running.
        self.extend(events.clone(), image_ids.clone()).await?;
        // 3. Stop the old one, swap folders atomically, start the new one.
        let previous = self.dir.with_extension("previous");
        let _ = std::fs::remove_dir_all(&previous);
        if self.start_workload {
            self.compose_down().await?;
        }
        std::fs::rename(&self.dir, &previous)
            .with_context(|| format!("moving {} aside", self.dir.display()))?;
        std::fs::rename(staged, &self.dir)
            .with_context(|| format!("moving the new workload into {}", self.dir.display()))?;
        if !self.start_workload {
            return Ok(self.measured().await);
        }
        match self.run(&self.dir, &image_ids).await {
            Ok(()) => Ok(self.measured().await),
            Err(error) => {
                // Roll back: the old folder returns, is measured again, and runs.
                let _ = self.compose_down().await;
                let failed = self.dir.with_extension("failed");
                let _ = std::fs::remove_dir_all(&failed);
                std::fs::rename(&self.dir, &failed)?;
                std::fs::rename(&previous, &self.dir)?;
                let (old_events, old_ids) =
                    prepare(self.engine.as_ref(), &self.dir, self.token_hash).await?;
                self.extend(old_events, old_ids.clone()).await?;
                self.run(&self.dir, &old_ids).await?;
                Err(error.context("the new workload did not start; the previous one runs again"))
            }
        }
    }

    async fn extend(
        &self,
        events: Vec<WorkloadEvent>,
        image_ids: BTreeMap<String, String>,
    ) -> Result<()> {
        let mut measured = self.measured.write().await;
        let pcr = self.tpm.extend_workload(events.clone()).await?;
        measured.log.events.extend(events.iter().cloned());
        measured.current = events;
        measured.image_ids = image_ids;
        if measured.log.replay().0 != pcr {
            bail!(
                "PCR 23 no longer matches the log after extending: another writer extends PCR 23"
            );
        }
        write_state(&self.state_dir, &measured)
    }

    /// Runs the compose file with every image pinned to its measured ID.
    async fn run(&self, dir: &Path, image_ids: &BTreeMap<String, String>) -> Result<()> {
        let folder = WorkloadFolder::read(dir)?;
        let pinned = folder.compose.with_images(image_ids)?;
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

    async fn compose_down(&self) -> Result<()> {
        let file = self.state_dir.join("docker-compose.pinned.yml");
        match &self.engine {
            Some(engine) => {
                engine
                    .compose(PROJECT, &file, &self.dir, &["down", "--timeout", "10"])
                    .await
            }
            None => Ok(()),
        }
    }
}

/// Loads archives, resolves image IDs, and computes the events of the workload in `dir`. Without
/// an engine (measure-only) the IDs come from the archives alone.
async fn prepare(
    engine: Option<&Engine>,
    dir: &Path,
    token_hash: Option<Sha256Digest>,
) -> Result<(Vec<WorkloadEvent>, BTreeMap<String, String>)> {
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
    let events = folder.events(&image_ids, token_hash)?;
    Ok((events, image_ids))
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
    std::fs::write(&temporary, serde_json::to_vec(state)?)?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

//! Measuring a workload folder: `docker-compose.yml`, every other regular file (those under
//! `config/` as config files, the environment files compose reads as env files, the rest as
//! plain files, since a bind mount may hand any of them to a container), the host paths compose
//! mounts from outside the folder, and every image by its content-derived ID. `secrets/` is never
//! read.
//!
//! The same function serves the agent (before it starts the workload, and again before every
//! `compose up`) and the CLI (to compute the golden value offline), so both always agree on what
//! PCR 23 must be.

use super::compose::{Compose, ComposeError, ComposeService};
use super::log::{EventKind, WorkloadEvent};
use super::mounts::HostMount;
use super::paths::{relative_path, PathError};
use super::token::TokenCommitment;
use crate::digest::Sha256Digest;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const COMPOSE_FILE: &str = "docker-compose.yml";
pub const CONFIG_DIR: &str = "config";
pub const SECRETS_DIR: &str = "secrets";
/// Compose reads this for variable interpolation when it exists.
pub const DOT_ENV: &str = ".env";
/// Upper bound on measured files (`config/` and the rest together): the log holds at most
/// 4096 events, and several generations must fit.
pub const MAX_FILES: usize = 2048;
/// Upper bound on directory entries visited (empty directories cost nothing else).
pub const MAX_ENTRIES: usize = 16_384;
/// Upper bound on the bytes hashed for one measurement (image archives included).
pub const MAX_MEASURED_BYTES: u64 = 4 << 30;
/// Deepest directory nesting below the workload folder.
pub const MAX_DEPTH: usize = 32;

/// Why a workload folder cannot be measured.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no {COMPOSE_FILE} in the workload folder")]
    NoCompose(PathBuf),
    #[error("{COMPOSE_FILE}: {0}")]
    Compose(#[from] ComposeError),
    #[error("{0}: symbolic links are not measured; copy the file instead")]
    Symlink(PathBuf),
    #[error("{0}: not a regular file or directory")]
    SpecialFile(PathBuf),
    #[error("{0}: file name is not UTF-8")]
    NotUtf8(PathBuf),
    #[error(
        "the workload folder holds more than {MAX_FILES} files to measure ({SECRETS_DIR}/ aside)"
    )]
    TooManyFiles,
    #[error("the workload folder holds more than {MAX_ENTRIES} directory entries")]
    TooManyEntries,
    #[error("the files to measure hold more than {MAX_MEASURED_BYTES} bytes")]
    TooLarge,
    #[error("{0}: directories nest deeper than {MAX_DEPTH} levels")]
    TooDeep(PathBuf),
    #[error("env file {path:?} is under {SECRETS_DIR}/, which is never measured: move it")]
    EnvFileInSecrets { path: String },
    #[error("env file {path:?}: {source}")]
    EnvFilePath { path: String, source: PathError },
    #[error("image {reference:?} has no resolved image ID")]
    MissingImage { reference: String },
    #[error("image {reference:?}: image ID {id:?} is not of the form sha256:<64 hex digits>")]
    BadImageId { reference: String, id: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkloadError + '_ {
    move |source| WorkloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a workload folder asks to run, read but not yet resolved to image IDs.
#[derive(Debug, Clone)]
pub struct WorkloadFolder {
    pub root: PathBuf,
    pub compose_bytes: Vec<u8>,
    pub compose: Compose,
    pub services: Vec<ComposeService>,
    /// Files under `config/`, as (relative path, content digest), in byte order of the path.
    pub config_files: Vec<(String, Sha256Digest)>,
    /// Environment files compose reads, as (relative path, content digest), sorted.
    pub env_files: Vec<(String, Sha256Digest)>,
    /// Every other regular file outside `config/` and `secrets/` (image archives included), as
    /// (relative path, content digest), in byte order of the path.
    pub files: Vec<(String, Sha256Digest)>,
    /// Host paths outside the folder that compose mounts, by path.
    pub host_mounts: Vec<HostMount>,
}

impl WorkloadFolder {
    /// Reads and hashes everything measured, refusing anything that cannot be measured.
    pub fn read(root: &Path) -> Result<Self, WorkloadError> {
        let compose_path = root.join(COMPOSE_FILE);
        refuse_links_on_the_way(root, COMPOSE_FILE).map_err(|e| match e {
            WorkloadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                WorkloadError::NoCompose(root.to_owned())
            }
            other => other,
        })?;
        let compose_bytes = read_bounded(&compose_path, super::compose::MAX_COMPOSE_BYTES)?;
        let compose = Compose::parse(&compose_bytes)?;
        let services = compose.services()?;
        let host_mounts = compose.host_mounts()?;
        let mut budget = Budget::default();

        let mut config_files = Vec::new();
        if std::fs::symlink_metadata(root.join(CONFIG_DIR)).is_ok() {
            config_files = collect_tree(root, CONFIG_DIR, &[], &BTreeSet::new(), &mut budget)?;
        }
        let env_files = read_env_files(root, &services, &mut budget)?;
        let env_names: BTreeSet<String> = env_files.iter().map(|(name, _)| name.clone()).collect();
        // Never read, but a link there could make `./secrets/x` mount a host path.
        if let Ok(meta) = std::fs::symlink_metadata(root.join(SECRETS_DIR)) {
            if meta.file_type().is_symlink() {
                return Err(WorkloadError::Symlink(root.join(SECRETS_DIR)));
            }
        }
        let skip = [COMPOSE_FILE, CONFIG_DIR, SECRETS_DIR];
        let files = collect_tree(root, "", &skip, &env_names, &mut budget)?;
        Ok(Self {
            root: root.to_owned(),
            compose_bytes,
            compose,
            services,
            config_files,
            env_files,
            files,
            host_mounts,
        })
    }

    /// The image references the services use, sorted and distinct.
    pub fn image_references(&self) -> BTreeSet<String> {
        self.services.iter().map(|s| s.image.clone()).collect()
    }

    /// The measurement events, in the canonical order of docs/measurement.md, ending with the
    /// separator. `image_ids` maps every image reference to `sha256:<hex>`.
    pub fn events(
        &self,
        image_ids: &BTreeMap<String, String>,
        api_token: Option<&TokenCommitment>,
    ) -> Result<Vec<WorkloadEvent>, WorkloadError> {
        self.events_with_data(image_ids, api_token, None)
    }

    /// [`Self::events`] plus the `data-key` event saying how `/data` is protected (after the
    /// token's, before the separator).
    pub fn events_with_data(
        &self,
        image_ids: &BTreeMap<String, String>,
        api_token: Option<&TokenCommitment>,
        data: Option<super::data::DataState>,
    ) -> Result<Vec<WorkloadEvent>, WorkloadError> {
        let mut events = vec![WorkloadEvent::over(
            EventKind::ComposeFile,
            COMPOSE_FILE,
            &self.compose_bytes,
        )];
        let by_kind = [
            (EventKind::ConfigFile, &self.config_files),
            (EventKind::EnvFile, &self.env_files),
            (EventKind::File, &self.files),
        ];
        for (kind, files) in by_kind {
            for (path, digest) in files {
                events.push(WorkloadEvent::with_digest(kind, path, *digest));
            }
        }
        for mount in &self.host_mounts {
            events.push(WorkloadEvent::with_payload(
                EventKind::HostMount,
                &mount.source,
                mount.payload(),
            ));
        }
        for reference in self.image_references() {
            let id = image_ids
                .get(&reference)
                .ok_or_else(|| WorkloadError::MissingImage {
                    reference: reference.clone(),
                })?;
            if !is_image_id(id) {
                return Err(WorkloadError::BadImageId {
                    reference,
                    id: id.clone(),
                });
            }
            events.push(WorkloadEvent::image(reference, id.clone()));
        }
        if let Some(token) = api_token {
            events.push(token.event());
        }
        if let Some(data) = data {
            events.push(data.event());
        }
        events.push(WorkloadEvent::separator());
        Ok(events)
    }
}

/// The env files of all services plus `.env`, normalized, deduplicated, hashed.
fn read_env_files(
    root: &Path,
    services: &[ComposeService],
    budget: &mut Budget,
) -> Result<Vec<(String, Sha256Digest)>, WorkloadError> {
    let mut env_paths: BTreeSet<String> = services
        .iter()
        .flat_map(|service| service.env_files.iter().cloned())
        .collect();
    if std::fs::symlink_metadata(root.join(DOT_ENV)).is_ok() {
        env_paths.insert(DOT_ENV.to_owned());
    }
    let mut env_files = Vec::new();
    for path in env_paths {
        let path = relative_path(&path).map_err(|source| WorkloadError::EnvFilePath {
            path: path.clone(),
            source,
        })?;
        if path == SECRETS_DIR || path.starts_with(&format!("{SECRETS_DIR}/")) {
            return Err(WorkloadError::EnvFileInSecrets { path });
        }
        refuse_links_on_the_way(root, &path)?;
        let digest = budget.hash(&root.join(&path))?;
        env_files.push((path, digest));
    }
    Ok(env_files)
}

/// What one measurement may still read.
#[derive(Default)]
struct Budget {
    files: usize,
    entries: usize,
    bytes: u64,
}

impl Budget {
    /// Hashes a regular file, counting its bytes against the limit.
    fn hash(&mut self, path: &Path) -> Result<Sha256Digest, WorkloadError> {
        let (digest, read) = hash_bounded(path, MAX_MEASURED_BYTES - self.bytes)?;
        self.bytes += read;
        Ok(digest)
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Every regular file below `root/start` (the whole folder when `start` is empty), as (relative
/// path, digest) in byte order of the path, walked without recursion. At the top, names in
/// `skip` are left to their own readers (after the link check); paths in `exclude` are measured
/// elsewhere. Links, special files and names that are not UTF-8 are refused.
fn collect_tree(
    root: &Path,
    start: &str,
    skip: &[&str],
    exclude: &BTreeSet<String>,
    budget: &mut Budget,
) -> Result<Vec<(String, Sha256Digest)>, WorkloadError> {
    let mut out = Vec::new();
    let mut pending = vec![(start.to_owned(), 0usize)];
    while let Some((relative, depth)) = pending.pop() {
        let dir = if relative.is_empty() {
            root.to_owned()
        } else {
            root.join(&relative)
        };
        let meta = std::fs::symlink_metadata(&dir).map_err(io(&dir))?;
        if meta.file_type().is_symlink() {
            return Err(WorkloadError::Symlink(dir));
        }
        if depth > MAX_DEPTH {
            return Err(WorkloadError::TooDeep(dir));
        }
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            budget.entries += 1;
            if budget.entries > MAX_ENTRIES {
                return Err(WorkloadError::TooManyEntries);
            }
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| WorkloadError::NotUtf8(path.clone()))?;
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_symlink() {
                return Err(WorkloadError::Symlink(path));
            }
            if relative.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let name = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            if kind.is_dir() {
                pending.push((name, depth + 1));
            } else if !kind.is_file() {
                return Err(WorkloadError::SpecialFile(path));
            } else if !exclude.contains(&name) {
                budget.files += 1;
                if budget.files > MAX_FILES {
                    return Err(WorkloadError::TooManyFiles);
                }
                out.push((name, budget.hash(&path)?));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Refuses a symlink anywhere along `relative` under `root`, and anything but a regular file at
/// its end (opening a FIFO would block the measurement forever).
fn refuse_links_on_the_way(root: &Path, relative: &str) -> Result<(), WorkloadError> {
    let mut path = root.to_owned();
    let mut meta = None;
    for part in relative.split('/') {
        path.push(part);
        let this = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if this.file_type().is_symlink() {
            return Err(WorkloadError::Symlink(path));
        }
        meta = Some(this);
    }
    match meta {
        Some(meta) if !meta.file_type().is_file() => Err(WorkloadError::SpecialFile(path)),
        _ => Ok(()),
    }
}

/// SHA-256 of a file's content, streamed; at most `limit` bytes are read (the file may grow
/// while it is hashed), more is [`WorkloadError::TooLarge`]. Returns the digest and the length.
fn hash_bounded(path: &Path, limit: u64) -> Result<(Sha256Digest, u64), WorkloadError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = file.take(limit.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(WorkloadError::TooLarge);
        }
        hasher.update(&buffer[..n]);
    }
    Ok((Sha256Digest(hasher.finalize().into()), total))
}

/// SHA-256 of a whole file's content, streamed (bounded by [`MAX_MEASURED_BYTES`]).
pub fn hash_file(path: &Path) -> Result<Sha256Digest, WorkloadError> {
    hash_bounded(path, MAX_MEASURED_BYTES).map(|(digest, _)| digest)
}

fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, WorkloadError> {
    let file = File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() > limit {
        return Err(ComposeError::TooLarge(bytes.len()).into());
    }
    Ok(bytes)
}

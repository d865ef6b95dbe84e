//! Measuring a workload folder: `docker-compose.yml`, every file under `config/`, the environment
//! files compose reads, and every image by its content-derived ID. `secrets/` is never read.
//!
//! The same function serves the agent (before it starts the workload) and the CLI (to compute the
//! golden value offline), so both always agree on what PCR 23 must be.

use super::compose::{Compose, ComposeError, ComposeService};
use super::log::{EventKind, WorkloadEvent};
use super::paths::{relative_path, PathError};
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
/// Upper bound on files under `config/`.
pub const MAX_CONFIG_FILES: usize = 2048;

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
    #[error("{CONFIG_DIR}/ holds more than {MAX_CONFIG_FILES} files")]
    TooManyConfigFiles,
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
}

impl WorkloadFolder {
    /// Reads and hashes everything measured, refusing anything that cannot be measured.
    pub fn read(root: &Path) -> Result<Self, WorkloadError> {
        let compose_path = root.join(COMPOSE_FILE);
        let compose_bytes = match read_bounded(&compose_path, super::compose::MAX_COMPOSE_BYTES) {
            Err(WorkloadError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(WorkloadError::NoCompose(root.to_owned()))
            }
            other => other?,
        };
        let compose = Compose::parse(&compose_bytes)?;
        let services = compose.services()?;

        let mut config_files = Vec::new();
        let config_root = root.join(CONFIG_DIR);
        if config_root.exists() {
            collect_files(&config_root, CONFIG_DIR, &mut config_files)?;
        }
        config_files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

        let mut env_paths: BTreeSet<String> = services
            .iter()
            .flat_map(|service| service.env_files.iter().cloned())
            .collect();
        if root.join(DOT_ENV).exists() {
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
            let full = root.join(&path);
            refuse_links_on_the_way(root, &path)?;
            env_files.push((path, hash_file(&full)?));
        }
        Ok(Self {
            root: root.to_owned(),
            compose_bytes,
            compose,
            services,
            config_files,
            env_files,
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
        api_token_hash: Option<Sha256Digest>,
    ) -> Result<Vec<WorkloadEvent>, WorkloadError> {
        let mut events = vec![WorkloadEvent::over(
            EventKind::ComposeFile,
            COMPOSE_FILE,
            &self.compose_bytes,
        )];
        for (path, digest) in &self.config_files {
            events.push(WorkloadEvent::with_digest(
                EventKind::ConfigFile,
                path,
                *digest,
            ));
        }
        for (path, digest) in &self.env_files {
            events.push(WorkloadEvent::with_digest(
                EventKind::EnvFile,
                path,
                *digest,
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
        if let Some(hash) = api_token_hash {
            events.push(WorkloadEvent::with_digest(
                EventKind::ApiToken,
                "api-token",
                hash,
            ));
        }
        events.push(WorkloadEvent::separator());
        Ok(events)
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

fn collect_files(
    dir: &Path,
    relative: &str,
    out: &mut Vec<(String, Sha256Digest)>,
) -> Result<(), WorkloadError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.file_type().is_symlink() {
        return Err(WorkloadError::Symlink(dir.to_owned()));
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| WorkloadError::NotUtf8(path.clone()))?;
        let relative = format!("{relative}/{name}");
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_symlink() {
            return Err(WorkloadError::Symlink(path));
        } else if kind.is_dir() {
            collect_files(&path, &relative, out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_CONFIG_FILES {
                return Err(WorkloadError::TooManyConfigFiles);
            }
            out.push((relative, hash_file(&path)?));
        } else {
            return Err(WorkloadError::SpecialFile(path));
        }
    }
    Ok(())
}

/// Refuses a symlink anywhere along `relative` under `root`.
fn refuse_links_on_the_way(root: &Path, relative: &str) -> Result<(), WorkloadError> {
    let mut path = root.to_owned();
    for part in relative.split('/') {
        path.push(part);
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            return Err(WorkloadError::Symlink(path));
        }
    }
    Ok(())
}

/// SHA-256 of a file's content, streamed.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, WorkloadError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
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

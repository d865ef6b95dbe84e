//! The container engine, through the Docker Engine API (`bollard`), for images, status and logs;
//! and the engine's compose tool for running the compose file.
//!
//! Images are pinned by ID: the compose file the tool runs is a copy in which every `image:` is
//! replaced by the ID that was measured, so what runs is exactly what PCR 23 records.

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, ListContainersOptions, LogsOptions,
};
use bollard::Docker;
use cvm_attestation::workload::mounts::AGENT_SOCKET_VARIABLE;
use cvm_attestation::workload::{archived_images, ArchivedImage};
use futures_util::TryStreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest log returned per container by /container-logs.
pub const MAX_LOG_BYTES: usize = 1 << 20;
/// How long one compose invocation may take.
pub const COMPOSE_TIMEOUT: Duration = Duration::from_secs(300);

/// `*.tar` files at the top of `dir`, sorted.
fn archive_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "tar") && path.is_file())
        .collect();
    archives.sort();
    Ok(archives)
}

/// Image IDs by tag, computed from the archives' content alone (no engine).
pub fn archive_ids(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut ids = BTreeMap::new();
    for archive in archive_paths(dir)? {
        let file = std::fs::File::open(&archive)
            .with_context(|| format!("opening {}", archive.display()))?;
        for image in archived_images(std::io::BufReader::new(file))
            .with_context(|| format!("reading image archive {}", archive.display()))?
        {
            for tag in image.tags {
                ids.insert(tag, image.image_id.clone());
            }
        }
    }
    Ok(ids)
}

/// A connection to the engine plus how to run compose against it.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
    compose_command: Vec<String>,
    /// Directory of the agent's local API socket, passed to compose as `CVM_AGENT_SOCKET_DIR`.
    socket_dir: Option<PathBuf>,
}

impl Engine {
    pub fn connect(
        socket: &Path,
        compose_command: Vec<String>,
        socket_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let path = socket.to_str().context("engine socket path is not UTF-8")?;
        let docker = Docker::connect_with_unix(path, 300, bollard::API_DEFAULT_VERSION)
            .with_context(|| {
                format!("connecting to the container engine at {}", socket.display())
            })?;
        Ok(Self {
            docker,
            socket: socket.to_owned(),
            compose_command,
            socket_dir,
        })
    }

    /// Loads every `*.tar` at the top of `dir`, checking that the engine computed the same image
    /// IDs as we do from the archive's content.
    pub async fn load_archives(&self, dir: &Path) -> Result<Vec<ArchivedImage>> {
        let mut loaded = Vec::new();
        for archive in archive_paths(dir)? {
            let file = std::fs::File::open(&archive)
                .with_context(|| format!("opening {}", archive.display()))?;
            let images = archived_images(std::io::BufReader::new(file))
                .with_context(|| format!("reading image archive {}", archive.display()))?;
            let bytes = tokio::fs::read(&archive).await?;
            self.docker
                .import_image(
                    ImportImageOptions::default(),
                    bollard::body_full(bytes.into()),
                    None,
                )
                .try_collect::<Vec<_>>()
                .await
                .with_context(|| format!("loading {} into the engine", archive.display()))?;
            for image in &images {
                let inspected = self
                    .docker
                    .inspect_image(&image.image_id)
                    .await
                    .with_context(|| {
                        format!(
                            "{}: the engine has no image {}",
                            archive.display(),
                            image.image_id
                        )
                    })?;
                if inspected.id.as_deref() != Some(image.image_id.as_str()) {
                    bail!(
                        "{}: the engine reports image ID {:?}, the archive's content gives {}",
                        archive.display(),
                        inspected.id,
                        image.image_id
                    );
                }
            }
            loaded.extend(images);
        }
        Ok(loaded)
    }

    /// The image ID of every reference: present locally (loaded or cached) or pulled now.
    pub async fn resolve_images(
        &self,
        references: impl IntoIterator<Item = String>,
    ) -> Result<BTreeMap<String, String>> {
        let mut ids = BTreeMap::new();
        for reference in references {
            let id = match self.docker.inspect_image(&reference).await {
                Ok(image) => image.id,
                Err(_) => {
                    self.docker
                        .create_image(
                            Some(CreateImageOptions {
                                from_image: Some(reference.clone()),
                                ..Default::default()
                            }),
                            None,
                            None,
                        )
                        .try_collect::<Vec<_>>()
                        .await
                        .with_context(|| format!("pulling image {reference}"))?;
                    self.docker.inspect_image(&reference).await?.id
                }
            };
            let id = id.ok_or_else(|| anyhow!("the engine reports no ID for image {reference}"))?;
            ids.insert(reference, id);
        }
        Ok(ids)
    }

    /// `compose -p PROJECT -f FILE --project-directory DIR up -d` (or another action).
    pub async fn compose(
        &self,
        project: &str,
        file: &Path,
        dir: &Path,
        action: &[&str],
    ) -> Result<()> {
        let (program, leading) = self
            .compose_command
            .split_first()
            .context("no compose command")?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(leading)
            .arg("-p")
            .arg(project)
            .arg("-f")
            .arg(file)
            .arg("--project-directory")
            .arg(dir)
            .args(action)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            // Always set, empty without a socket: the environment wins over the workload's
            // `.env`, so the host path behind `${CVM_AGENT_SOCKET_DIR:-/default}` (measured as
            // written) is the agent's own directory or that default, never one `.env` chose.
            .env(
                AGENT_SOCKET_VARIABLE,
                self.socket_dir.as_deref().unwrap_or(Path::new("")),
            )
            .kill_on_drop(true);
        let output = tokio::time::timeout(COMPOSE_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{program} {} timed out after {COMPOSE_TIMEOUT:?}",
                    action.join(" ")
                )
            })?
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} failed ({}): {}",
                action.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Containers of a compose project: (service name, container ID, state).
    pub async fn project_containers(&self, project: &str) -> Result<Vec<(String, String, String)>> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("com.docker.compose.project={project}")],
        )]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        Ok(containers
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let service = labels
                    .get("com.docker.compose.service")
                    .cloned()
                    .unwrap_or_default();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                (service, c.id.unwrap_or_default(), state)
            })
            .collect())
    }

    /// The last `MAX_LOG_BYTES` of a container's output.
    pub async fn logs(&self, container: &str) -> Result<String> {
        let chunks = self
            .docker
            .logs(
                container,
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    tail: "1000".into(),
                    ..Default::default()
                }),
            )
            .try_collect::<Vec<_>>()
            .await?;
        let mut text: String = chunks.iter().map(ToString::to_string).collect();
        if text.len() > MAX_LOG_BYTES {
            let cut = text.len() - MAX_LOG_BYTES;
            let boundary = (cut..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            text.drain(..boundary);
        }
        Ok(text)
    }
}

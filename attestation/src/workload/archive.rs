//! Image IDs straight from image archives (`docker save` and OCI layouts), offline.
//!
//! An image ID is the SHA-256 of the image's config JSON, which lists the digests of every layer:
//! Docker and Podman both derive it from content, so it identifies the image wherever it is
//! loaded. The digest is computed here from the bytes, never taken from a file name.

use crate::digest::Sha256Digest;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;

/// Largest `manifest.json`, `index.json` or config blob read from an archive.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Largest number of entries scanned in an archive.
pub const MAX_ENTRIES: usize = 100_000;

/// Why an archive's images cannot be identified.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("{name} is larger than {MAX_METADATA_BYTES} bytes")]
    TooLarge { name: String },
    #[error("archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("archive has no manifest.json (docker save) or index.json (OCI)")]
    NoManifest,
    #[error("{name}: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error("manifest names config {0:?}, which is not in the archive")]
    MissingConfig(String),
}

/// One tagged image in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedImage {
    pub tags: Vec<String>,
    /// `sha256:<hex>` of the config.
    pub image_id: String,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: OciDescriptor,
}

/// Lists the images of a `docker save` or OCI archive with their content-derived IDs.
pub fn archived_images(reader: impl Read) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let small = metadata_files(reader)?;
    if let Some(manifest) = small.get("manifest.json") {
        return docker_images(&small, manifest);
    }
    if let Some(index) = small.get("index.json") {
        return oci_images(&small, index);
    }
    Err(ArchiveError::NoManifest)
}

/// The archive's small metadata files by name; layers are skipped without being buffered.
fn metadata_files(reader: impl Read) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(reader);
    for (count, entry) in archive.entries()?.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let is_metadata = name == "manifest.json"
            || name == "index.json"
            || name.ends_with(".json")
            || name.starts_with("blobs/sha256/");
        if !is_metadata || entry.size() > MAX_METADATA_BYTES {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        small.insert(name, bytes);
    }
    Ok(small)
}

/// A metadata file the manifest names.
fn metadata<'a>(
    small: &'a BTreeMap<String, Vec<u8>>,
    name: &str,
) -> Result<&'a [u8], ArchiveError> {
    small
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| ArchiveError::MissingConfig(name.to_owned()))
}

fn parse_err(name: &str) -> impl FnOnce(serde_json::Error) -> ArchiveError {
    let name = name.to_owned();
    move |source| ArchiveError::Json { name, source }
}

/// `docker save`: `manifest.json` lists each image's config file and tags.
fn docker_images(
    small: &BTreeMap<String, Vec<u8>>,
    manifest: &[u8],
) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(manifest).map_err(parse_err("manifest.json"))?;
    entries
        .into_iter()
        .map(|entry| {
            let config = metadata(small, entry.config.trim_start_matches("./"))?;
            Ok(ArchivedImage {
                tags: entry.repo_tags.unwrap_or_default(),
                image_id: format!("sha256:{}", Sha256Digest::of(config)),
            })
        })
        .collect()
}

/// OCI layout: `index.json` lists manifests (tagged by annotation), each naming its config blob.
fn oci_images(
    small: &BTreeMap<String, Vec<u8>>,
    index: &[u8],
) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let index: OciIndex = serde_json::from_slice(index).map_err(parse_err("index.json"))?;
    index
        .manifests
        .into_iter()
        .map(|descriptor| {
            let manifest_name = blob_name(&descriptor.digest);
            let manifest: OciManifest = serde_json::from_slice(metadata(small, &manifest_name)?)
                .map_err(parse_err(&manifest_name))?;
            let config = metadata(small, &blob_name(&manifest.config.digest))?;
            let tags = descriptor
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    descriptor
                        .annotations
                        .get("org.opencontainers.image.ref.name")
                })
                .cloned()
                .into_iter()
                .collect();
            Ok(ArchivedImage {
                tags,
                image_id: format!("sha256:{}", Sha256Digest::of(config)),
            })
        })
        .collect()
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

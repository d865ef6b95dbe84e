//! Cloud Storage for `deploy-gcp`: the disk packed as GCP's `disk.tar.gz` (or the builder's,
//! when current) and sent by a resumable upload that resumes from what the service says it has;
//! the object operations cleanup needs.

use super::gce::{self, Gcp};
use crate::deploy::blocks::UploadStats;
use crate::deploy::{step, DEPLOYMENT_TAG};
use anyhow::{bail, Context, Result};
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// Resumable upload chunks must be multiples of 256 KiB; larger ones are faster (fewer round
/// trips, and the emulator copies the whole upload per chunk).
const CHUNK_BYTES: u64 = 128 * 256 * 1024;
/// Attempts per chunk: an interrupted chunk resumes from what the service says it got.
const UPLOAD_RETRY: crate::deploy::net::Retry = crate::deploy::net::Retry::uploads(5);
/// Object metadata: the SHA-256 of the disk.raw the tarball holds.
pub(super) const DISK_SHA_KEY: &str = "cvm-cli-disk-sha256";

pub(super) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Where the tarball's bytes come from: the builder's file, or `tar | gzip` packing the disk
/// while the upload runs (no temporary tarball: packing and upload overlap).
pub(super) struct TarballSource {
    reader: Box<dyn Read + Send>,
    /// The packer, whose exit status decides whether the last chunk may complete the object.
    child: Option<std::process::Child>,
    /// The size when known in advance (the builder's file).
    size: Option<u64>,
    /// A temporary directory with a padded sparse copy of the disk, removed on drop.
    temp: Option<PathBuf>,
}

impl Drop for TarballSource {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(TempDir(self.temp.take()));
    }
}

/// A temporary directory removed on drop.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The image's `disk.tar.gz`: the one `cvm-image` wrote beside it when it is current and the disk
/// is a whole number of GiB (Compute Engine requires that), else packed on the fly like
/// `cvm-image` does (oldgnu sparse `disk.raw`, `gzip -1 -n`), from a sparse copy padded with
/// zeros to a whole GiB when needed.
pub(super) fn tarball_source(image: &Path) -> Result<TarballSource> {
    let raw = std::fs::metadata(image)?;
    let aligned = raw.len() % GIB == 0;
    let named_raw = image.file_name().and_then(|n| n.to_str()) == Some("disk.raw");
    if aligned && named_raw {
        if let Some(source) = builder_tarball(image, &raw)? {
            return Ok(source);
        }
    }
    let mut source = TarballSource {
        reader: Box::new(std::io::empty()),
        child: None,
        size: None,
        temp: None,
    };
    let disk = if aligned && named_raw {
        image.to_owned()
    } else {
        padded_copy(image, raw.len(), &mut source)?
    };
    let epoch: u64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    step(format!(
        "packing {} as disk.tar.gz while uploading",
        image.display()
    ));
    let mut child = spawn_tar(&disk, epoch)?;
    source.reader = Box::new(child.stdout.take().context("tar's output")?);
    source.child = Some(child);
    Ok(source)
}

/// The builder's `disk.tar.gz` beside `image`, when it exists, is not empty and is not older
/// than the disk.
fn builder_tarball(image: &Path, raw: &std::fs::Metadata) -> Result<Option<TarballSource>> {
    let sibling = image.with_file_name("disk.tar.gz");
    let Ok(tar) = std::fs::metadata(&sibling) else {
        return Ok(None);
    };
    if tar.modified()? >= raw.modified()? && tar.len() > 0 {
        step(format!("using {}", sibling.display()));
        return Ok(Some(TarballSource {
            reader: Box::new(std::fs::File::open(&sibling)?),
            child: None,
            size: Some(tar.len()),
            temp: None,
        }));
    }
    Ok(None)
}

/// A sparse copy of the disk named `disk.raw` in a new temporary directory (owned by `source`
/// from its creation on), padded with zeros to a whole GiB.
fn padded_copy(image: &Path, raw_len: u64, source: &mut TarballSource) -> Result<PathBuf> {
    let temp = std::env::temp_dir().join(format!(
        "cvm-cli-gcp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&temp).with_context(|| format!("creating {}", temp.display()))?;
    source.temp = Some(temp.clone());
    let padded = raw_len.div_ceil(GIB) * GIB;
    if raw_len % GIB != 0 {
        step(format!(
            "disk is {} bytes; Compute Engine needs whole GiB: packing a sparse copy padded \
             with zeros to {} GiB",
            raw_len,
            padded / GIB
        ));
    }
    let copy = temp.join("disk.raw");
    let status = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("copying {} failed ({status})", image.display());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)?
        .set_len(padded)?;
    Ok(copy)
}

/// The archive of image_builder::formats::write_gcp_tar, to a pipe instead of a file, and with
/// the fastest gzip level: on real disks it packs about 2.5 times faster than the default for
/// about 7 % more bytes, and packing, not the upload, is what takes the time.
fn spawn_tar(disk: &Path, epoch: u64) -> Result<std::process::Child> {
    std::process::Command::new("tar")
        .arg("--format=oldgnu")
        .arg("--sparse")
        .arg("--use-compress-program=gzip -1 -n")
        .arg(format!("--mtime=@{epoch}"))
        .args(["--owner=0", "--group=0", "--numeric-owner", "--mode=0644"])
        .args(["-cf", "-", "-C"])
        .arg(disk.parent().context("disk has no directory")?)
        .arg("disk.raw")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running tar")
}

/// One chunk of the tarball for the uploader; `last` when the stream ended with it (and the
/// packer succeeded).
struct Piece {
    data: Bytes,
    last: bool,
}

/// Reads the tarball in chunks on a thread of its own, so reading (and packing) overlaps the
/// upload: one chunk waits in the channel while one travels.
fn read_pieces(
    mut source: TarballSource,
    chunk: u64,
) -> tokio::sync::mpsc::Receiver<Result<Piece>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        let mut carry = None;
        loop {
            let piece = next_piece(&mut source, chunk, &mut carry);
            let more = matches!(piece, Ok(Piece { last: false, .. }));
            if sender.blocking_send(piece).is_err() || !more {
                break;
            }
        }
    });
    receiver
}

fn next_piece(source: &mut TarballSource, chunk: u64, carry: &mut Option<u8>) -> Result<Piece> {
    let mut data = Vec::with_capacity(chunk as usize);
    data.extend(carry.take());
    let want = chunk - data.len() as u64;
    (&mut source.reader)
        .take(want)
        .read_to_end(&mut data)
        .context("reading the tarball")?;
    if data.len() as u64 == chunk {
        // A full chunk is the last one only if nothing follows: look one byte ahead.
        let mut next = [0u8; 1];
        let n = loop {
            match source.reader.read(&mut next) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                result => break result.context("reading the tarball")?,
            }
        };
        if n == 1 {
            *carry = Some(next[0]);
            return Ok(Piece {
                data: data.into(),
                last: false,
            });
        }
    }
    if let Some(mut child) = source.child.take() {
        let status = child.wait().context("waiting for tar")?;
        if !status.success() {
            bail!("packing disk.tar.gz failed: tar {status}");
        }
    }
    Ok(Piece {
        data: data.into(),
        last: true,
    })
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A Cloud Storage object's metadata (the fields we use).
#[derive(Debug, Deserialize)]
pub struct StorageObject {
    pub name: String,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// `{storage}/storage/v1/b/{bucket}/o/{object}` (bucket and object names are checked).
pub(super) fn object_url(gcp: &Gcp, bucket: &str, object: &str) -> String {
    format!(
        "{}/storage/v1/b/{bucket}/o/{}",
        gcp.storage,
        percent_encode(object)
    )
}

/// The object URL Compute Engine reads the image from.
pub(super) fn public_object_url(bucket: &str, object: &str) -> String {
    format!("https://storage.googleapis.com/{bucket}/{object}")
}

/// The upload chunk: `CHUNK_BYTES`, or `CVM_GCP_UPLOAD_CHUNK_KIB` (a multiple of 256; tests use
/// small chunks to exercise many of them).
pub(super) fn chunk_bytes() -> u64 {
    std::env::var("CVM_GCP_UPLOAD_CHUNK_KIB")
        .ok()
        .and_then(|kib| kib.parse::<u64>().ok())
        .filter(|kib| *kib > 0 && kib % 256 == 0 && *kib <= 1 << 20)
        .map_or(CHUNK_BYTES, |kib| kib * 1024)
}

/// Resumable upload in chunks of `chunk_bytes()` while the tarball is read or packed; the total
/// is sent with the last chunk. An interrupted chunk is resumed from the offset the service
/// reports.
pub(super) async fn upload_object(
    gcp: &Gcp,
    bucket: &str,
    object: &str,
    deployment: &str,
    disk_sha256: &str,
    mut source: TarballSource,
    progress: bool,
) -> Result<UploadStats> {
    let started = Instant::now();
    // Removed when the upload ends, whichever way (the reader thread may outlive a failure;
    // tar can go on reading the unlinked copy).
    let _temp = TempDir(source.temp.take());
    let chunk_bytes = chunk_bytes();
    let target = Target {
        gcp,
        bucket,
        object,
    };
    let session = Session {
        url: target
            .start_session(deployment, disk_sha256, source.size)
            .await?,
        bar: progress_bar(progress, source.size),
        target,
    };
    let mut pieces = read_pieces(source, chunk_bytes);
    let mut start = 0u64;
    let mut sent = 0u64;
    let (done, tarball_bytes) = loop {
        let piece = pieces
            .recv()
            .await
            .context("the tarball reader stopped")??;
        let chunk = Chunk::new(piece, start);
        if let Some(done) = session.send(&chunk, &mut sent).await? {
            break (done, chunk.end);
        }
        start = chunk.end;
    };
    session.bar.finish_and_clear();
    let size = done
        .size
        .as_deref()
        .and_then(|size| size.parse::<u64>().ok());
    if size != Some(tarball_bytes) {
        bail!(
            "gs://{bucket}/{object} has {size:?} bytes after the upload, expected {tarball_bytes}"
        );
    }
    Ok(UploadStats {
        image_bytes: tarball_bytes,
        block_bytes: chunk_bytes,
        blocks_total: tarball_bytes.div_ceil(chunk_bytes),
        blocks_uploaded: sent.div_ceil(chunk_bytes),
        bytes_uploaded: sent,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The object being uploaded.
struct Target<'a> {
    gcp: &'a Gcp,
    bucket: &'a str,
    object: &'a str,
}

impl Target<'_> {
    /// Starts a resumable upload (with the total when known) and returns its session URL.
    async fn start_session(
        &self,
        deployment: &str,
        disk_sha256: &str,
        size: Option<u64>,
    ) -> Result<reqwest::Url> {
        let (gcp, bucket, object) = (self.gcp, self.bucket, self.object);
        let url = reqwest::Url::parse_with_params(
            &format!("{}/upload/storage/v1/b/{bucket}/o", gcp.storage),
            &[("uploadType", "resumable"), ("name", object)],
        )?;
        let mut request = gcp
            .request(reqwest::Method::POST, url.as_str())
            .header("X-Upload-Content-Type", "application/gzip")
            .timeout(Duration::from_secs(120));
        if let Some(size) = size {
            request = request.header("X-Upload-Content-Length", size.to_string());
        }
        let response = request
            .json(&json!({
                "name": object,
                "contentType": "application/gzip",
                "metadata": { DEPLOYMENT_TAG: deployment, DISK_SHA_KEY: disk_sha256 },
            }))
            .send()
            .await
            .context("starting the resumable upload")?;
        let status = response.status();
        if !status.is_success() {
            let body = gce::read_limited(response, 1 << 20)
                .await
                .unwrap_or_default();
            bail!(
                "starting the upload to gs://{bucket}: HTTP {status}: {}",
                gce::error_message(&body)
            );
        }
        response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() < 8192)
            .and_then(|value| reqwest::Url::parse(value).ok())
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .context("the upload session has no Location")
    }
}

/// A bar with the total when the size is known, else a byte counter; hidden without progress.
fn progress_bar(progress: bool, size: Option<u64>) -> indicatif::ProgressBar {
    match (progress, size) {
        (false, _) => indicatif::ProgressBar::hidden(),
        (true, Some(size)) => indicatif::ProgressBar::new(size).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        (true, None) => indicatif::ProgressBar::no_length().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    }
}

/// One piece placed in the object: bytes `start..end`, and the total to announce (`*` until
/// the last piece).
struct Chunk {
    piece: Piece,
    start: u64,
    end: u64,
    total: String,
}

impl Chunk {
    fn new(piece: Piece, start: u64) -> Self {
        let end = start + piece.data.len() as u64;
        let total = if piece.last {
            end.to_string()
        } else {
            "*".to_owned()
        };
        Self {
            piece,
            start,
            end,
            total,
        }
    }
}

/// A started resumable upload.
struct Session<'a> {
    target: Target<'a>,
    url: reqwest::Url,
    bar: indicatif::ProgressBar,
}

impl Session<'_> {
    async fn put(&self, range: String, body: Bytes) -> reqwest::Result<reqwest::Response> {
        self.target
            .gcp
            .request(reqwest::Method::PUT, self.url.as_str())
            .header("Content-Range", range)
            .timeout(Duration::from_secs(600))
            .body(body)
            .send()
            .await
    }

    /// Sends `chunk` until the service has all of it, resuming after failures; returns the
    /// object once the last chunk completed it.
    async fn send(&self, chunk: &Chunk, sent: &mut u64) -> Result<Option<StorageObject>> {
        let (bucket, object) = (self.target.bucket, self.target.object);
        let (start, end, total) = (chunk.start, chunk.end, &chunk.total);
        let mut offset = start;
        let mut failures = 0u32;
        loop {
            let result = if offset < end {
                *sent += end - offset;
                let body = chunk.piece.data.slice((offset - start) as usize..);
                self.put(format!("bytes {offset}-{}/{total}", end - 1), body)
                    .await
            } else {
                // Nothing left of this chunk: complete the object (last) or ask the status.
                self.put(format!("bytes */{total}"), Bytes::new()).await
            };
            let failure = match result {
                Ok(response) if response.status().is_success() => {
                    if !chunk.piece.last {
                        bail!("gs://{bucket}/{object} was completed before its end");
                    }
                    return finished(response).await.map(Some);
                }
                Ok(response) if response.status().as_u16() == 308 => {
                    let persisted = persisted(&response)?;
                    if persisted < start || persisted > end {
                        bail!("the upload service reports {persisted} bytes, expected {start} to {end}");
                    }
                    offset = persisted;
                    self.bar.set_position(offset);
                    if offset == end && !chunk.piece.last {
                        return Ok(None);
                    }
                    failures = 0;
                    continue;
                }
                Ok(response) => self.refused(response).await?,
                Err(error) => error.to_string(),
            };
            failures += 1;
            if let Some(done) = self.resume(chunk, failures, &failure, &mut offset).await? {
                return Ok(Some(done));
            }
        }
    }

    /// The failure text of an unexpected response; an error when retrying cannot help (a
    /// client error other than 408 and 429).
    async fn refused(&self, response: reqwest::Response) -> Result<String> {
        let status = response.status();
        let body = gce::read_limited(response, 1 << 20)
            .await
            .unwrap_or_default();
        let text = format!("HTTP {status}: {}", gce::error_message(&body));
        if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
            let (bucket, object) = (self.target.bucket, self.target.object);
            bail!("uploading to gs://{bucket}/{object}: {text}");
        }
        Ok(text)
    }

    /// After a failure: waits, then asks how far the upload got (moving `offset` there), so the
    /// next round sends the rest of the chunk. Returns the object if the last chunk completed.
    async fn resume(
        &self,
        chunk: &Chunk,
        failures: u32,
        failure: &str,
        offset: &mut u64,
    ) -> Result<Option<StorageObject>> {
        if UPLOAD_RETRY.exhausted(failures) {
            let (bucket, object) = (self.target.bucket, self.target.object);
            bail!("uploading to gs://{bucket}/{object} failed {failures} times: {failure}");
        }
        step(format!("upload interrupted ({failure}); resuming"));
        tokio::time::sleep(UPLOAD_RETRY.delay(failures)).await;
        let total = &chunk.total;
        if let Ok(response) = self.put(format!("bytes */{total}"), Bytes::new()).await {
            if response.status().is_success() && chunk.piece.last {
                return finished(response).await.map(Some);
            }
            if response.status().as_u16() == 308 {
                *offset = persisted(&response)?.clamp(chunk.start, chunk.end);
            }
        }
        Ok(None)
    }
}

/// The object the completing request returned.
async fn finished(response: reqwest::Response) -> Result<StorageObject> {
    gce::json::<StorageObject>(response, "finishing the upload").await
}

/// The next offset from a 308's `Range: bytes=0-N` (none: nothing persisted).
fn persisted(response: &reqwest::Response) -> Result<u64> {
    let Some(range) = response.headers().get("range") else {
        return Ok(0);
    };
    let last = range
        .to_str()
        .ok()
        .and_then(|range| range.strip_prefix("bytes=0-"))
        .and_then(|last| last.parse::<u64>().ok())
        .context("unexpected Range in the upload status")?;
    Ok(last + 1)
}

/// Whether the object exists.
pub(super) async fn object_exists(
    gcp: &Gcp,
    bucket: &str,
    object: &str,
) -> Result<Option<StorageObject>> {
    let response = gcp
        .request(reqwest::Method::GET, &object_url(gcp, bucket, object))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("looking up the object")?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    gce::json(response, "looking up the object").await.map(Some)
}

/// Reads the bucket: fails with Google's message when it does not exist or the credentials may
/// not see it (preflight, before any upload).
pub(super) async fn bucket_exists(gcp: &Gcp, bucket: &str) -> Result<()> {
    let url = format!("{}/storage/v1/b/{}", gcp.storage, percent_encode(bucket));
    let response = gcp
        .request(reqwest::Method::GET, &url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("reading the bucket")?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        bail!("bucket {bucket} does not exist (create it first, in the zone's region)");
    }
    gce::json::<serde_json::Value>(response, &format!("reading bucket {bucket}"))
        .await
        .map(drop)
}

pub(super) async fn delete_object(gcp: &Gcp, bucket: &str, object: &str) -> Result<bool> {
    let response = gcp
        .request(reqwest::Method::DELETE, &object_url(gcp, bucket, object))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("deleting the object")?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    if !status.is_success() {
        let body = gce::read_limited(response, 1 << 20)
            .await
            .unwrap_or_default();
        bail!("HTTP {status}: {}", gce::error_message(&body));
    }
    Ok(true)
}

//! Parallel upload of a disk image in fixed-size blocks, skipping blocks that are all zero.
//!
//! A fresh cloud disk reads as zeros, so zero blocks need not travel. Holes of a sparse file are
//! found with `SEEK_DATA`/`SEEK_HOLE` without reading them; blocks in data regions are read and
//! skipped when they are zero anyway. Each cloud supplies the `put` of one block (EBS
//! PutSnapshotBlock, an Azure page write); this module does the reading, the parallelism, the
//! retries and the progress bar.

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use hyper::body::Bytes;
use serde::Serialize;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What an upload moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadStats {
    pub image_bytes: u64,
    pub block_bytes: u64,
    pub blocks_total: u64,
    pub blocks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub seconds: f64,
}

/// One block to write: its index and its bytes (the last block of an image is zero-padded to
/// the block size, which clouds require and a disk of whole blocks tolerates). `Bytes`, so a
/// retry hands the same buffer again instead of copying it.
pub struct Block {
    pub index: u64,
    pub data: Bytes,
}

/// How a caller wants the upload done.
pub struct UploadSettings {
    pub block_bytes: u64,
    pub parallel: usize,
    /// Draw a progress bar on stderr (only shown on a terminal).
    pub progress: bool,
    /// Attempts per block before the upload fails (transient errors are retried with backoff).
    pub attempts: u32,
}

/// Uploads every non-zero block of `image` with `put`, `parallel` at a time.
pub async fn upload<F, Fut>(image: &Path, settings: &UploadSettings, put: F) -> Result<UploadStats>
where
    F: Fn(Block) -> Fut + Sync,
    Fut: Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let file = Arc::new(
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?,
    );
    let image_bytes = file.metadata()?.len();
    let block_bytes = settings.block_bytes;
    let candidates = data_blocks(&file, image_bytes, block_bytes)?;
    let blocks_total = image_bytes.div_ceil(block_bytes);

    let bar = progress_bar(settings.progress, candidates.len() as u64 * block_bytes);
    let uploaded = AtomicU64::new(0);
    futures_util::stream::iter(candidates)
        .map(|index| {
            let file = Arc::clone(&file);
            let bar = bar.clone();
            let put = &put;
            let uploaded = &uploaded;
            async move {
                let block = tokio::task::spawn_blocking(move || {
                    read_block(&file, index, block_bytes, image_bytes)
                })
                .await??;
                if let Some(block) = block {
                    put_with_retries(put, block, settings.attempts).await?;
                    uploaded.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(block_bytes);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(settings.parallel.max(1))
        .try_collect::<()>()
        .await?;
    bar.finish_and_clear();
    let blocks_uploaded = uploaded.into_inner();
    Ok(UploadStats {
        image_bytes,
        block_bytes,
        blocks_total,
        blocks_uploaded,
        bytes_uploaded: blocks_uploaded * block_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn put_with_retries<F, Fut>(put: &F, block: Block, attempts: u32) -> Result<()>
where
    F: Fn(Block) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let retry = super::net::Retry::uploads(attempts);
    let mut failures = 0;
    loop {
        let copy = Block {
            index: block.index,
            data: block.data.clone(),
        };
        match put(copy).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                failures += 1;
                if retry.exhausted(failures) {
                    return Err(error.context(format!(
                        "block {} failed {failures} times, giving up",
                        block.index
                    )));
                }
                warn(&format!(
                    "block {} attempt {failures} failed, retrying: {error:#}",
                    block.index
                ));
                tokio::time::sleep(retry.delay(failures)).await;
            }
        }
    }
}

fn warn(message: &str) {
    crate::output::warn(message);
}

fn progress_bar(visible: bool, total: u64) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} uploading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Indices of the blocks that overlap a data region of the file (all of them when the file
/// system cannot tell holes apart).
fn data_blocks(file: &std::fs::File, size: u64, block: u64) -> Result<Vec<u64>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut blocks = Vec::new();
    let mut offset: u64 = 0;
    while offset < size {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                // No data after `offset`: the rest is a hole.
                Some(libc::ENXIO) => break,
                // SEEK_DATA unsupported: treat everything as data.
                Some(libc::EINVAL) => return Ok((offset / block..size.div_ceil(block)).collect()),
                _ => return Err(error).context("finding the data regions of the image"),
            }
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let first = data / block;
        let last = hole.div_ceil(block);
        for index in first..last {
            if blocks.last() != Some(&index) {
                blocks.push(index);
            }
        }
        offset = hole.max(data + 1);
    }
    Ok(blocks)
}

/// Reads block `index`, zero-padded; `None` when it is all zero.
fn read_block(file: &std::fs::File, index: u64, block: u64, size: u64) -> Result<Option<Block>> {
    let start = index * block;
    let len = block.min(size - start) as usize;
    let mut data = vec![0u8; block as usize];
    file.read_exact_at(&mut data[..len], start)
        .with_context(|| format!("reading block {index} of the image"))?;
    if is_zero(&data) {
        return Ok(None);
    }
    Ok(Some(Block {
        index,
        data: Bytes::from(data),
    }))
}

/// Whole-word comparison: fast enough even in unoptimised builds.
fn is_zero(data: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128.
    let (head, words, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn settings(block_bytes: u64) -> UploadSettings {
        UploadSettings {
            block_bytes,
            parallel: 4,
            progress: false,
            attempts: 3,
        }
    }

    /// A sparse image with data in a few places, a zero-filled (non-hole) region, and a tail
    /// shorter than a block.
    fn sample_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("disk.raw");
        let size = 10 * 4096 + 100;
        let mut content = vec![0u8; size];
        content[5] = 1;
        content[3 * 4096 + 17] = 2;
        content[size - 1] = 3;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size as u64).unwrap();
        file.write_all_at(&content[..4096], 0).unwrap();
        // Written zeros: data on disk, but nothing to upload.
        file.write_all_at(&vec![0u8; 4096], 6 * 4096).unwrap();
        file.write_all_at(&content[3 * 4096..4 * 4096], 3 * 4096)
            .unwrap();
        file.write_all_at(&content[10 * 4096..], 10 * 4096).unwrap();
        (path, content)
    }

    #[tokio::test]
    async fn only_non_zero_blocks_travel_and_they_rebuild_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (path, content) = sample_image(dir.path());
        let received = Mutex::new(BTreeMap::new());
        let stats = upload(&path, &settings(4096), |block: Block| {
            received.lock().unwrap().insert(block.index, block.data);
            async { Ok(()) }
        })
        .await
        .unwrap();
        let received = received.into_inner().unwrap();
        assert_eq!(received.keys().copied().collect::<Vec<_>>(), vec![0, 3, 10]);
        assert_eq!(stats.blocks_total, 11);
        assert_eq!(stats.blocks_uploaded, 3);
        let mut rebuilt = vec![0u8; 11 * 4096];
        for (index, data) in received {
            rebuilt[index as usize * 4096..][..4096].copy_from_slice(&data);
        }
        assert_eq!(&rebuilt[..content.len()], &content[..]);
        assert!(rebuilt[content.len()..].iter().all(|b| *b == 0));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_persistent_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample_image(dir.path());
        let calls = AtomicU64::new(0);
        upload(&path, &settings(4096), |_block: Block| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    anyhow::bail!("throttled")
                }
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let error = upload(&path, &settings(4096), |block: Block| async move {
            if block.index == 3 {
                anyhow::bail!("disk full")
            }
            Ok(())
        })
        .await
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("block 3 failed 3 times"), "{text}");
        assert!(text.contains("disk full"), "{text}");
    }

    #[test]
    fn zero_detection_handles_unaligned_edges() {
        let mut data = vec![0u8; 1000];
        assert!(is_zero(&data[3..997]));
        data[998] = 1;
        assert!(is_zero(&data[..998]));
        assert!(!is_zero(&data[1..]));
    }
}

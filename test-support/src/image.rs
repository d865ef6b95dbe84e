//! Container images made locally from Debian's `busybox-static`: no public registry is reachable,
//! so tests build a one-layer image and load it (`docker load` format) or push it to the
//! fixture's registry.
//!
//! The archive is deterministic (fixed times, owners and order), so its image ID, the SHA-256 of
//! the config JSON, is the same on every engine and every run.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

const BUSYBOX: &str = "/bin/busybox";

/// A `docker save`-format archive and the identities it carries.
pub struct ImageArchive {
    /// The tar bytes, for `POST /images/load`.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the config JSON: the image ID both Docker and Podman report.
    pub image_id: String,
    /// The tag recorded in `manifest.json`.
    pub tag: String,
}

/// Builds a busybox image tagged `tag` whose default command is `cmd`. `extra_files` are added
/// to the root (path, contents), so two archives can differ in content for measurement tests.
pub fn busybox_image_archive(
    tag: &str,
    cmd: &[&str],
    extra_files: &[(&str, &[u8])],
) -> Result<ImageArchive> {
    let layer = busybox_layer(extra_files)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "test-support busybox" }],
    }))?;
    let config_hex = hex::encode(Sha256::digest(&config));
    let layer_dir = hex::encode(Sha256::digest(&layer));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]))?;

    let mut archive = tar::Builder::new(Vec::new());
    append_file(&mut archive, &format!("{config_hex}.json"), &config, 0o644)?;
    append_dir(&mut archive, &format!("{layer_dir}/"))?;
    append_file(
        &mut archive,
        &format!("{layer_dir}/layer.tar"),
        &layer,
        0o644,
    )?;
    append_file(&mut archive, "manifest.json", &manifest, 0o644)?;
    Ok(ImageArchive {
        bytes: archive.into_inner()?,
        image_id: format!("sha256:{config_hex}"),
        tag: tag.to_owned(),
    })
}

/// The root filesystem layer: `/bin/busybox`, one symlink per applet, and the extra files.
fn busybox_layer(extra_files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX}: install busybox-static"))?;
    let applets = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("listing busybox applets")?;
    let mut applets: Vec<String> = String::from_utf8(applets.stdout)?
        .lines()
        .filter(|name| !name.is_empty() && *name != "busybox" && !name.contains('/'))
        .map(str::to_owned)
        .collect();
    applets.sort();

    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/"] {
        append_dir(&mut layer, dir)?;
    }
    append_file(&mut layer, "bin/busybox", &busybox, 0o755)?;
    for applet in &applets {
        append_symlink(&mut layer, &format!("bin/{applet}"), "busybox")?;
    }
    for (path, contents) in extra_files {
        append_file(&mut layer, path.trim_start_matches('/'), contents, 0o644)?;
    }
    Ok(layer.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_file(
    archive: &mut tar::Builder<Vec<u8>>,
    path: &str,
    contents: &[u8],
    mode: u32,
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, contents.len() as u64);
    archive.append_data(&mut h, path, contents)?;
    Ok(())
}

fn append_dir(archive: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    archive.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn append_symlink(archive: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    archive.append_link(&mut h, path, Path::new(target))?;
    Ok(())
}

//! The build: config in, `disk.raw` (+ cloud formats) and `measurements.json` out. Each step is a
//! module of its own; this file only wires them and derives every ID from content, so equal
//! inputs give equal bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, Format, Profile};
use crate::deb::{sha256_file, DebCache};
use crate::error::{invalid, IoContext, Result};
use crate::measure::{self, FileDigest, Measurements};
use crate::{erofs, esp, formats, gpt, initrd, kmod, tree, uki, verity};

/// Reports progress of the long steps (the CLI shows spinners; tests pass [`Quiet`]).
pub trait Progress {
    fn start(&self, step: &str);
    fn finish(&self, step: &str, detail: &str);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str) {}
    fn finish(&self, _: &str, _: &str) {}
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub out_dir: PathBuf,
    pub name: String,
    pub root_hash: String,
    pub kernel_cmdline: String,
    /// Output files and their sizes in bytes.
    pub files: BTreeMap<String, u64>,
    pub measurements: Measurements,
    /// Partitions of `disk.raw`: name, byte offset, size.
    pub partitions: Vec<gpt::Placed>,
    /// Seconds per step.
    pub timings: BTreeMap<String, f64>,
}

/// Domain-separated SHA-256, for deriving IDs.
fn derive(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut data = label.as_bytes().to_vec();
    data.push(0);
    for p in parts {
        data.extend_from_slice(p);
    }
    measure::sha256(&data)
}

fn id16(label: &str, parts: &[&[u8]]) -> [u8; 16] {
    let d = derive(label, parts);
    gpt::v4(d[..16].try_into().unwrap_or_default())
}

/// The kernel: `vmlinuz`, its version and its module tree, from an unpacked package.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub version: String,
    pub moddir: PathBuf,
}

fn find_kernel(tree: &Path) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(tree.join("boot")) else {
        return Ok(None);
    };
    for e in entries {
        let e = e.ctx("reading kernel package", tree)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            for m in ["lib/modules", "usr/lib/modules"] {
                let moddir = tree.join(m).join(version);
                if moddir.is_dir() {
                    return Ok(Some(Kernel {
                        vmlinuz: e.path(),
                        version: version.into(),
                        moddir,
                    }));
                }
            }
            return Err(invalid(format!(
                "{name} without a module tree in the package"
            )));
        }
    }
    Ok(None)
}

/// Fetches and unpacks the kernel package, following a metapackage to its image package.
pub fn kernel(cfg: &Config, cache: &DebCache) -> Result<Kernel> {
    if let Some(t) = &cfg.kernel_tree {
        return find_kernel(t)?
            .ok_or_else(|| invalid(format!("{} has no boot/vmlinuz-*", t.display())));
    }
    let deb = match &cfg.kernel_deb {
        Some(d) => d.clone(),
        None => cache.fetch(&cfg.kernel_package)?,
    };
    if let Some(k) = find_kernel(&cache.unpack(&deb)?)? {
        return Ok(k);
    }
    let dep = DebCache::depends(&deb)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            invalid(format!(
                "{} has neither a kernel nor a linux-image dependency",
                deb.display()
            ))
        })?;
    let deb = cache.fetch(&dep)?;
    find_kernel(&cache.unpack(&deb)?)?
        .ok_or_else(|| invalid(format!("{dep} contains no /boot/vmlinuz-*")))
}

/// Fetches the systemd EFI stub.
pub fn stub(cfg: &Config, cache: &DebCache) -> Result<PathBuf> {
    if let Some(p) = &cfg.stub_path {
        return Ok(p.clone());
    }
    let deb = match &cfg.stub_deb {
        Some(d) => d.clone(),
        None => cache.fetch(&cfg.stub_package)?,
    };
    let p = cache
        .unpack(&deb)?
        .join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    if !p.is_file() {
        return Err(invalid(format!(
            "{} has no linuxx64.efi.stub",
            deb.display()
        )));
    }
    Ok(p)
}

/// Builds the root filesystem staging tree (`dest` must not exist yet).
pub fn root_tree(cfg: &Config, dest: &Path) -> Result<()> {
    match cfg.profile {
        Profile::Tiny => {
            for d in ["proc", "sys", "dev", "run", "tmp", "etc", "root", "var"] {
                std::fs::create_dir_all(dest.join(d)).ctx("creating root dir", dest.join(d))?;
            }
            tree::copy_file(&cfg.busybox, &dest.join("bin/busybox"))?;
        }
        Profile::Debian => {
            crate::debian::bootstrap(cfg, dest, cfg.epoch()?)?;
            crate::debian::customize(dest)?;
        }
    }
    for o in &cfg.overlays {
        tree::copy_overlay(o, dest)?;
    }
    if cfg.profile == Profile::Tiny {
        tree::busybox_links(&cfg.busybox, dest)?;
    }
    if let Some(agent) = &cfg.agent {
        match cfg.profile {
            // busybox root: the agent brings its libraries from the build host.
            Profile::Tiny => tree::copy_with_libs(agent, dest, Path::new("/usr/bin/cvm-agent"))?,
            // Debian root: its libraries come from the root's own packages (never the host's).
            Profile::Debian => {
                tree::copy_checking_libs(agent, dest, Path::new("/usr/bin/cvm-agent"))?
            }
        }
    }
    Ok(())
}

/// Kernel and stub: from Debian packages (`tiny`) or from the root tree itself (`debian`).
fn kernel_and_stub(cfg: &Config, cache: &DebCache, root: &Path) -> Result<(Kernel, PathBuf)> {
    match cfg.profile {
        Profile::Tiny => Ok((kernel(cfg, cache)?, stub(cfg, cache)?)),
        Profile::Debian => {
            let k = find_kernel(root)?.ok_or_else(|| {
                invalid("the Debian root has no /boot/vmlinuz-* (is linux-image-* in packages?)")
            })?;
            let s = root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
            if !s.is_file() {
                return Err(invalid(
                    "the Debian root has no systemd EFI stub (is systemd-boot-efi in packages?)",
                ));
            }
            Ok((k, s))
        }
    }
}

fn os_release(cfg: &Config) -> String {
    let version = cfg.version.as_deref().unwrap_or("0");
    format!(
        "ID=cvm\nNAME=\"CVM image\"\nPRETTY_NAME=\"CVM image {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n",
        name = cfg.name
    )
}

/// Runs the whole build into `out`.
pub fn build(
    cfg: &Config,
    out: &Path,
    cache: &DebCache,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    std::fs::create_dir_all(out).ctx("creating output dir", out)?;
    let epoch = cfg.epoch()?;
    let mut timings = BTreeMap::new();
    let mut step = |name: &str, t: Instant, detail: String| {
        timings.insert(name.to_string(), t.elapsed().as_secs_f64());
        progress.finish(name, &detail);
    };

    let t = Instant::now();
    progress.start("root tree");
    let stage = tempfile::tempdir().ctx("creating staging dir", std::env::temp_dir())?;
    let rootdir = stage.path().join("root");
    root_tree(cfg, &rootdir)?;
    let tree_digest = tree::digest(&rootdir, cfg.profile != Profile::Tiny)?;
    step("root tree", t, String::new());

    let t = Instant::now();
    progress.start("kernel and stub");
    let (kernel, stub_path) = kernel_and_stub(cfg, cache, &rootdir)?;
    let stub = std::fs::read(&stub_path).ctx("reading stub", &stub_path)?;
    let stub_name = uki::stub_version(&stub).unwrap_or_else(|| "unknown stub".into());
    step(
        "kernel and stub",
        t,
        format!("kernel {}, {stub_name}", kernel.version),
    );

    let t = Instant::now();
    progress.start("erofs");
    let root_img = out.join("root.erofs");
    let root_size = erofs::mkfs(
        &rootdir,
        &root_img,
        epoch,
        &id16("cvm-erofs-uuid", &[&tree_digest]),
        &erofs::Options {
            all_root: cfg.profile == Profile::Tiny,
            compression: cfg.erofs_compression.clone(),
        },
    )?;
    step("erofs", t, format!("{} KiB", root_size / 1024));

    let t = Instant::now();
    progress.start("verity");
    let root_digest = sha256_file(&root_img)?;
    let params = verity::VerityParams::new(
        derive("cvm-verity-salt", &[&root_digest]).to_vec(),
        id16("cvm-verity-uuid", &[&root_digest]),
    );
    let verity_img = out.join("root.verity");
    let tree_out = verity::format(&root_img, &verity_img, &params, verity::default_threads())?;
    let root_hash = hex::encode(tree_out.root_hash);
    step("verity", t, root_hash.clone());

    let mut cmdline = format!("{} roothash={root_hash}", cfg.cmdline.trim());
    if !cfg.verity {
        // Benchmark/diagnosis builds only (see `Config::verity`): same disk, the initrd mounts the
        // root without dm-verity. The flag is in the measured .cmdline, so PCR 4/11 differ.
        cmdline.push_str(" cvm.verity=off");
    }

    let t = Instant::now();
    progress.start("initrd");
    let modules = kmod::resolve(&kernel.moddir, &cfg.initrd_modules)?;
    let initrd_bytes = initrd::build(&initrd::InitrdInputs {
        base: &cfg.initrd_dir,
        busybox: &cfg.busybox,
        veritysetup: &cfg.veritysetup,
        modules: &modules,
        builtin: Some(&kernel.moddir.join("modules.builtin")),
        epoch,
    })?;
    std::fs::write(out.join("initrd.cpio"), &initrd_bytes).ctx("writing initrd", out)?;
    step(
        "initrd",
        t,
        format!(
            "{} modules, {} KiB",
            modules.len(),
            initrd_bytes.len() / 1024
        ),
    );

    let t = Instant::now();
    progress.start("uki");
    let linux = std::fs::read(&kernel.vmlinuz).ctx("reading kernel", &kernel.vmlinuz)?;
    let osrel = os_release(cfg);
    let uki_bytes = uki::build(&uki::UkiParts {
        stub: &stub,
        linux: &linux,
        initrd: &initrd_bytes,
        cmdline: &cmdline,
        osrel: &osrel,
        uname: &kernel.version,
    })?;
    let uki_path = out.join("uki.efi");
    let uki_bytes = match &cfg.secure_boot {
        None => {
            std::fs::write(&uki_path, &uki_bytes).ctx("writing UKI", &uki_path)?;
            uki_bytes
        }
        Some(sb) => {
            let unsigned = out.join("uki.unsigned.efi");
            std::fs::write(&unsigned, &uki_bytes).ctx("writing UKI", &unsigned)?;
            uki::sign(&unsigned, &uki_path, sb)?;
            std::fs::read(&uki_path).ctx("reading signed UKI", &uki_path)?
        }
    };
    let uki_sha = measure::sha256(&uki_bytes);
    step("uki", t, format!("{} KiB", uki_bytes.len() / 1024));

    let t = Instant::now();
    progress.start("esp");
    let esp_mib = if cfg.esp_size_mib > 0 {
        cfg.esp_size_mib
    } else {
        (uki_bytes.len() as u64 * 11 / 10).div_ceil(1 << 20) + 4
    };
    let esp_img = out.join("esp.img");
    let volid = u32::from_be_bytes(uki_sha[..4].try_into().unwrap_or_default());
    esp::build(&esp_img, &uki_path, esp_mib, volid, epoch)?;
    step("esp", t, format!("{esp_mib} MiB"));

    let t = Instant::now();
    progress.start("disk");
    let esp_digest = sha256_file(&esp_img)?;
    let rh = tree_out.root_hash;
    let parts = vec![
        gpt::Partition {
            name: "esp".into(),
            type_guid: gpt::parse_uuid(gpt::types::ESP)?,
            uuid: id16("cvm-esp", &[&esp_digest]),
            attributes: 0,
            content: Some(esp_img.clone()),
            size: esp_mib << 20,
        },
        gpt::Partition {
            name: "root".into(),
            type_guid: gpt::parse_uuid(gpt::types::ROOT_X86_64)?,
            uuid: rh[..16].try_into().unwrap_or_default(),
            attributes: gpt::ATTR_READ_ONLY,
            content: Some(root_img.clone()),
            size: 0,
        },
        gpt::Partition {
            name: "root-verity".into(),
            type_guid: gpt::parse_uuid(gpt::types::ROOT_VERITY_X86_64)?,
            uuid: rh[16..].try_into().unwrap_or_default(),
            attributes: gpt::ATTR_READ_ONLY,
            content: Some(verity_img.clone()),
            size: 0,
        },
        gpt::Partition {
            name: "data".into(),
            type_guid: gpt::parse_uuid(gpt::types::LINUX_DATA)?,
            uuid: id16("cvm-data", &[&rh]),
            attributes: 0,
            content: None,
            size: cfg.data_size_mib << 20,
        },
    ];
    let disk = out.join("disk.raw");
    let disk_guid = id16("cvm-disk", &[&rh, &uki_sha, &esp_digest]);
    let partitions = gpt::write(&disk, &disk_guid, &parts)?;
    let disk_digest = sha256_file(&disk)?;
    step("disk", t, String::new());

    let mut images = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut record = |name: &str, path: &Path| -> Result<()> {
        let size = std::fs::metadata(path).ctx("sizing output", path)?.len();
        files.insert(name.to_string(), size);
        images.insert(
            name.to_string(),
            FileDigest {
                sha256: hex::encode(sha256_file(path)?),
                size,
            },
        );
        Ok(())
    };
    record("disk.raw", &disk)?;
    record("uki.efi", &uki_path)?;
    record("root.erofs", &root_img)?;
    record("root.verity", &verity_img)?;
    for f in &cfg.formats {
        let t = Instant::now();
        let (name, label) = match f {
            Format::Raw => continue,
            Format::Vhd => ("disk.vhd", "vhd"),
            Format::Gcp => ("disk.tar.gz", "gcp"),
            Format::Vmdk => ("disk.vmdk", "vmdk"),
        };
        progress.start(label);
        let path = out.join(name);
        match f {
            Format::Vhd => {
                formats::write_vhd(&disk, &path, epoch, &id16("cvm-vhd", &[&disk_digest]))?;
            }
            Format::Gcp => formats::write_gcp_tar(&disk, &path, epoch)?,
            Format::Vmdk => {
                let cid = derive("cvm-vmdk-cid", &[&disk_digest]);
                formats::write_vmdk(
                    &disk,
                    &path,
                    u32::from_be_bytes(cid[..4].try_into().unwrap_or_default()),
                )?;
            }
            Format::Raw => {}
        }
        record(name, &path)?;
        step(label, t, String::new());
    }

    let t = Instant::now();
    progress.start("measurements");
    let measurements = Measurements {
        version: 1,
        pcrs: measure::predict(&uki_bytes, &stub, cfg.secure_boot.is_some())?,
        secure_boot: cfg.secure_boot.is_some(),
        verity_root_hash: root_hash.clone(),
        uki_sha256: hex::encode(uki_sha),
        uki_authenticode_sha256: hex::encode(crate::pe::authenticode_sha256(&uki_bytes)?),
        kernel_cmdline: cmdline.clone(),
        kernel_version: kernel.version.clone(),
        stub: stub_name,
        images,
    };
    let json = serde_json::to_vec_pretty(&measurements).map_err(|e| invalid(e.to_string()))?;
    std::fs::write(out.join("measurements.json"), json).ctx("writing measurements", out)?;
    step("measurements", t, String::new());

    Ok(BuildReport {
        out_dir: out.to_path_buf(),
        name: cfg.name.clone(),
        root_hash,
        kernel_cmdline: cmdline,
        files,
        measurements,
        partitions,
        timings,
    })
}

/// Total of the step timings.
pub fn total_time(r: &BuildReport) -> Duration {
    Duration::from_secs_f64(r.timings.values().sum())
}

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

/// One build in progress: its fixed inputs and the step timings so far.
struct Run<'a> {
    cfg: &'a Config,
    out: &'a Path,
    progress: &'a dyn Progress,
    epoch: u64,
    timings: BTreeMap<String, f64>,
}

/// The kernel and the EFI stub, as the later steps use them.
struct Boot {
    kernel: Kernel,
    stub: Vec<u8>,
    stub_name: String,
}

/// The read-only root image and its dm-verity hash tree.
struct RootImages {
    erofs: PathBuf,
    verity: PathBuf,
    root_hash: [u8; 32],
}

/// The written UKI (signed when Secure Boot is configured).
struct Uki {
    path: PathBuf,
    bytes: Vec<u8>,
    sha: [u8; 32],
}

/// The ESP image and its size.
struct Esp {
    path: PathBuf,
    mib: u64,
}

/// `disk.raw` and where its partitions landed.
struct Disk {
    path: PathBuf,
    partitions: Vec<gpt::Placed>,
    digest: [u8; 32],
}

/// Output files recorded so far: sizes for the report, digests for `measurements.json`.
#[derive(Default)]
struct Outputs {
    files: BTreeMap<String, u64>,
    images: BTreeMap<String, FileDigest>,
}

impl Outputs {
    fn record(&mut self, name: &str, path: &Path) -> Result<()> {
        let size = std::fs::metadata(path).ctx("sizing output", path)?.len();
        self.files.insert(name.to_string(), size);
        self.images.insert(
            name.to_string(),
            FileDigest {
                sha256: hex::encode(sha256_file(path)?),
                size,
            },
        );
        Ok(())
    }
}

/// The kernel command line: the configured one plus the verity root hash.
fn kernel_cmdline(cfg: &Config, root_hash: &str) -> String {
    let mut cmdline = format!("{} roothash={root_hash}", cfg.cmdline.trim());
    if !cfg.verity {
        // Benchmark/diagnosis builds only (see `Config::verity`): same disk, the initrd mounts the
        // root without dm-verity. The flag is in the measured .cmdline, so PCR 4/11 differ.
        cmdline.push_str(" cvm.verity=off");
    }
    cmdline
}

/// The file name and progress label of an extra output format (`None` for raw).
fn format_output(f: &Format) -> Option<(&'static str, &'static str)> {
    match f {
        Format::Raw => None,
        Format::Vhd => Some(("disk.vhd", "vhd")),
        Format::Gcp => Some(("disk.tar.gz", "gcp")),
        Format::Vmdk => Some(("disk.vmdk", "vmdk")),
    }
}

/// The partitions of `disk.raw`, with IDs derived from their content.
fn disk_partitions(
    cfg: &Config,
    esp: &Esp,
    root: &RootImages,
    esp_digest: &[u8; 32],
) -> Result<Vec<gpt::Partition>> {
    let rh = root.root_hash;
    Ok(vec![
        gpt::Partition {
            name: "esp".into(),
            type_guid: gpt::parse_uuid(gpt::types::ESP)?,
            uuid: id16("cvm-esp", &[esp_digest]),
            attributes: 0,
            content: Some(esp.path.clone()),
            size: esp.mib << 20,
        },
        gpt::Partition {
            name: "root".into(),
            type_guid: gpt::parse_uuid(gpt::types::ROOT_X86_64)?,
            uuid: rh[..16].try_into().unwrap_or_default(),
            attributes: gpt::ATTR_READ_ONLY,
            content: Some(root.erofs.clone()),
            size: 0,
        },
        gpt::Partition {
            name: "root-verity".into(),
            type_guid: gpt::parse_uuid(gpt::types::ROOT_VERITY_X86_64)?,
            uuid: rh[16..].try_into().unwrap_or_default(),
            attributes: gpt::ATTR_READ_ONLY,
            content: Some(root.verity.clone()),
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
    ])
}

impl Run<'_> {
    fn start(&self, name: &str) -> Instant {
        let t = Instant::now();
        self.progress.start(name);
        t
    }

    fn finish(&mut self, name: &str, t: Instant, detail: String) {
        self.timings
            .insert(name.to_string(), t.elapsed().as_secs_f64());
        self.progress.finish(name, &detail);
    }

    /// Stages the root tree in a temporary dir (kept alive by the returned guard).
    fn root_tree(&mut self) -> Result<(tempfile::TempDir, PathBuf, [u8; 32])> {
        let t = self.start("root tree");
        let stage = tempfile::tempdir().ctx("creating staging dir", std::env::temp_dir())?;
        let rootdir = stage.path().join("root");
        root_tree(self.cfg, &rootdir)?;
        let tree_digest = tree::digest(&rootdir, self.cfg.profile != Profile::Tiny)?;
        self.finish("root tree", t, String::new());
        Ok((stage, rootdir, tree_digest))
    }

    fn kernel_and_stub(&mut self, cache: &DebCache, rootdir: &Path) -> Result<Boot> {
        let t = self.start("kernel and stub");
        let (kernel, stub_path) = kernel_and_stub(self.cfg, cache, rootdir)?;
        let stub = std::fs::read(&stub_path).ctx("reading stub", &stub_path)?;
        let stub_name = uki::stub_version(&stub).unwrap_or_else(|| "unknown stub".into());
        self.finish(
            "kernel and stub",
            t,
            format!("kernel {}, {stub_name}", kernel.version),
        );
        Ok(Boot {
            kernel,
            stub,
            stub_name,
        })
    }

    fn erofs(&mut self, rootdir: &Path, tree_digest: &[u8; 32]) -> Result<PathBuf> {
        let t = self.start("erofs");
        let root_img = self.out.join("root.erofs");
        let root_size = erofs::mkfs(
            rootdir,
            &root_img,
            self.epoch,
            &id16("cvm-erofs-uuid", &[tree_digest]),
            &erofs::Options {
                all_root: self.cfg.profile == Profile::Tiny,
                compression: self.cfg.erofs_compression.clone(),
            },
        )?;
        self.finish("erofs", t, format!("{} KiB", root_size / 1024));
        Ok(root_img)
    }

    fn verity(&mut self, root_img: PathBuf) -> Result<RootImages> {
        let t = self.start("verity");
        let root_digest = sha256_file(&root_img)?;
        let params = verity::VerityParams::new(
            derive("cvm-verity-salt", &[&root_digest]).to_vec(),
            id16("cvm-verity-uuid", &[&root_digest]),
        );
        let verity_img = self.out.join("root.verity");
        let tree_out = verity::format(&root_img, &verity_img, &params, verity::default_threads())?;
        self.finish("verity", t, hex::encode(tree_out.root_hash));
        Ok(RootImages {
            erofs: root_img,
            verity: verity_img,
            root_hash: tree_out.root_hash,
        })
    }

    fn initrd(&mut self, kernel: &Kernel) -> Result<Vec<u8>> {
        let t = self.start("initrd");
        let cfg = self.cfg;
        let modules = kmod::resolve(&kernel.moddir, &cfg.initrd_modules)?;
        let initrd_bytes = initrd::build(&initrd::InitrdInputs {
            base: &cfg.initrd_dir,
            busybox: &cfg.busybox,
            veritysetup: &cfg.veritysetup,
            modules: &modules,
            builtin: Some(&kernel.moddir.join("modules.builtin")),
            epoch: self.epoch,
        })?;
        std::fs::write(self.out.join("initrd.cpio"), &initrd_bytes)
            .ctx("writing initrd", self.out)?;
        self.finish(
            "initrd",
            t,
            format!(
                "{} modules, {} KiB",
                modules.len(),
                initrd_bytes.len() / 1024
            ),
        );
        Ok(initrd_bytes)
    }

    fn uki(&mut self, boot: &Boot, initrd: &[u8], cmdline: &str) -> Result<Uki> {
        let t = self.start("uki");
        let linux =
            std::fs::read(&boot.kernel.vmlinuz).ctx("reading kernel", &boot.kernel.vmlinuz)?;
        let osrel = os_release(self.cfg);
        let uki_bytes = uki::build(&uki::UkiParts {
            stub: &boot.stub,
            linux: &linux,
            initrd,
            cmdline,
            osrel: &osrel,
            uname: &boot.kernel.version,
        })?;
        let uki_path = self.out.join("uki.efi");
        let uki_bytes = self.write_uki(&uki_path, uki_bytes)?;
        let sha = measure::sha256(&uki_bytes);
        self.finish("uki", t, format!("{} KiB", uki_bytes.len() / 1024));
        Ok(Uki {
            path: uki_path,
            bytes: uki_bytes,
            sha,
        })
    }

    /// Writes the UKI to `uki_path`, signing it when Secure Boot is configured; returns the
    /// bytes as written.
    fn write_uki(&self, uki_path: &Path, uki_bytes: Vec<u8>) -> Result<Vec<u8>> {
        match &self.cfg.secure_boot {
            None => {
                std::fs::write(uki_path, &uki_bytes).ctx("writing UKI", uki_path)?;
                Ok(uki_bytes)
            }
            Some(sb) => {
                let unsigned = self.out.join("uki.unsigned.efi");
                std::fs::write(&unsigned, &uki_bytes).ctx("writing UKI", &unsigned)?;
                uki::sign(&unsigned, uki_path, sb)?;
                std::fs::read(uki_path).ctx("reading signed UKI", uki_path)
            }
        }
    }

    fn esp(&mut self, uki: &Uki) -> Result<Esp> {
        let t = self.start("esp");
        let esp_mib = if self.cfg.esp_size_mib > 0 {
            self.cfg.esp_size_mib
        } else {
            (uki.bytes.len() as u64 * 11 / 10).div_ceil(1 << 20) + 4
        };
        let esp_img = self.out.join("esp.img");
        let volid = u32::from_be_bytes(uki.sha[..4].try_into().unwrap_or_default());
        esp::build(&esp_img, &uki.path, esp_mib, volid, self.epoch)?;
        self.finish("esp", t, format!("{esp_mib} MiB"));
        Ok(Esp {
            path: esp_img,
            mib: esp_mib,
        })
    }

    fn disk(&mut self, esp: &Esp, root: &RootImages, uki: &Uki) -> Result<Disk> {
        let t = self.start("disk");
        let esp_digest = sha256_file(&esp.path)?;
        let parts = disk_partitions(self.cfg, esp, root, &esp_digest)?;
        let disk = self.out.join("disk.raw");
        let disk_guid = id16("cvm-disk", &[&root.root_hash, &uki.sha, &esp_digest]);
        let partitions = gpt::write(&disk, &disk_guid, &parts)?;
        let digest = sha256_file(&disk)?;
        self.finish("disk", t, String::new());
        Ok(Disk {
            path: disk,
            partitions,
            digest,
        })
    }

    /// Records the main outputs, then writes and records each extra format.
    fn outputs(&mut self, disk: &Disk, uki: &Uki, root: &RootImages) -> Result<Outputs> {
        let mut outputs = Outputs::default();
        outputs.record("disk.raw", &disk.path)?;
        outputs.record("uki.efi", &uki.path)?;
        outputs.record("root.erofs", &root.erofs)?;
        outputs.record("root.verity", &root.verity)?;
        for f in &self.cfg.formats {
            let t = Instant::now();
            let Some((name, label)) = format_output(f) else {
                continue;
            };
            self.progress.start(label);
            let path = self.out.join(name);
            self.write_format(f, disk, &path)?;
            outputs.record(name, &path)?;
            self.finish(label, t, String::new());
        }
        Ok(outputs)
    }

    fn write_format(&self, f: &Format, disk: &Disk, path: &Path) -> Result<()> {
        match f {
            Format::Vhd => {
                formats::write_vhd(
                    &disk.path,
                    path,
                    self.epoch,
                    &id16("cvm-vhd", &[&disk.digest]),
                )?;
            }
            Format::Gcp => formats::write_gcp_tar(&disk.path, path, self.epoch)?,
            Format::Vmdk => {
                let cid = derive("cvm-vmdk-cid", &[&disk.digest]);
                formats::write_vmdk(
                    &disk.path,
                    path,
                    u32::from_be_bytes(cid[..4].try_into().unwrap_or_default()),
                )?;
            }
            Format::Raw => {}
        }
        Ok(())
    }

    fn measurements(
        &mut self,
        boot: Boot,
        uki: &Uki,
        root_hash: &str,
        cmdline: &str,
        images: BTreeMap<String, FileDigest>,
    ) -> Result<Measurements> {
        let t = self.start("measurements");
        let secure_boot = self.cfg.secure_boot.is_some();
        let measurements = Measurements {
            version: 1,
            pcrs: measure::predict(&uki.bytes, &boot.stub, secure_boot)?,
            secure_boot,
            verity_root_hash: root_hash.to_string(),
            uki_sha256: hex::encode(uki.sha),
            uki_authenticode_sha256: hex::encode(crate::pe::authenticode_sha256(&uki.bytes)?),
            kernel_cmdline: cmdline.to_string(),
            kernel_version: boot.kernel.version,
            stub: boot.stub_name,
            images,
        };
        let json = serde_json::to_vec_pretty(&measurements).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(self.out.join("measurements.json"), json)
            .ctx("writing measurements", self.out)?;
        self.finish("measurements", t, String::new());
        Ok(measurements)
    }
}

/// Runs the whole build into `out`.
pub fn build(
    cfg: &Config,
    out: &Path,
    cache: &DebCache,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    std::fs::create_dir_all(out).ctx("creating output dir", out)?;
    let mut run = Run {
        cfg,
        out,
        progress,
        epoch: cfg.epoch()?,
        timings: BTreeMap::new(),
    };
    // The staging dir holds the kernel (Debian profile) and is removed when `_stage` drops.
    let (_stage, rootdir, tree_digest) = run.root_tree()?;
    let boot = run.kernel_and_stub(cache, &rootdir)?;
    let root_img = run.erofs(&rootdir, &tree_digest)?;
    let root = run.verity(root_img)?;
    let root_hash = hex::encode(root.root_hash);
    let cmdline = kernel_cmdline(cfg, &root_hash);
    let initrd_bytes = run.initrd(&boot.kernel)?;
    let uki = run.uki(&boot, &initrd_bytes, &cmdline)?;
    let esp = run.esp(&uki)?;
    let disk = run.disk(&esp, &root, &uki)?;
    let Outputs { files, images } = run.outputs(&disk, &uki, &root)?;
    let measurements = run.measurements(boot, &uki, &root_hash, &cmdline, images)?;
    Ok(BuildReport {
        out_dir: out.to_path_buf(),
        name: cfg.name.clone(),
        root_hash,
        kernel_cmdline: cmdline,
        files,
        measurements,
        partitions: disk.partitions,
        timings: run.timings,
    })
}

/// Total of the step timings.
pub fn total_time(r: &BuildReport) -> Duration {
    Duration::from_secs_f64(r.timings.values().sum())
}

//! `cvm-image`: builds reproducible dm-verity UKI disk images (see docs/image.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use image_builder::config::{Config, Format, Profile};
use image_builder::deb::DebCache;
use image_builder::pipeline::{self, BuildReport, Progress};
use image_builder::verity;

#[derive(Parser)]
#[command(
    name = "cvm-image",
    version,
    about = "Build reproducible confidential-VM disk images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a config into an output directory.
    Build(BuildArgs),
    /// Boot a built image (OUT/disk.raw) under QEMU + OVMF + swtpm and compare the PCRs the guest
    /// reads with OUT/measurements.json (tiny images print them).
    Boot(BootArgs),
    /// Write a fixed VHD (raw disk + footer) from a raw disk whose size is a whole number of MiB.
    Vhd { raw: PathBuf, vhd: PathBuf },
    /// Write a dm-verity hash tree for DATA into HASH (like `veritysetup format`).
    Verity(VerityArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// The image.toml.
    #[arg(long)]
    config: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Override the config's profile (tiny|debian).
    #[arg(long)]
    profile: Option<Profile>,
    /// Download cache (default ~/.cache/cvm-image).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// One more overlay copied over the root after the config's (repeatable), e.g. a seed
    /// workload at usr/share/cvm/workload.
    #[arg(long = "overlay")]
    overlays: Vec<PathBuf>,
    /// Write only these formats instead of the config's (repeatable: raw, vhd, gcp, vmdk);
    /// `disk.raw` is always written.
    #[arg(long = "format", value_parser = parse_format)]
    formats: Vec<Format>,
    /// Print the build report as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BootArgs {
    /// The build's output directory.
    #[arg(long)]
    out: PathBuf,
    /// QEMU accelerator (tcg, kvm).
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// QEMU CPU model (e.g. `max`).
    #[arg(long)]
    cpu: Option<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// The disk's controller: virtio-blk, nvme or virtio-scsi.
    #[arg(long, default_value = "virtio-blk")]
    disk_bus: image_builder::boot::DiskBus,
    /// OVMF code image (e.g. OVMF_CODE_4M.secboot.fd for Secure Boot).
    #[arg(long)]
    ovmf_code: Option<PathBuf>,
    /// OVMF variable store template (e.g. one with your PK/KEK/db enrolled).
    #[arg(long)]
    ovmf_vars: Option<PathBuf>,
    /// Extra QEMU argument (repeatable).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// Also save the whole serial console to this file.
    #[arg(long)]
    serial: Option<PathBuf>,
}

#[derive(Args)]
struct VerityArgs {
    data: PathBuf,
    hash: PathBuf,
    /// Salt in hex.
    #[arg(long)]
    salt: String,
    /// Superblock UUID (textual form).
    #[arg(long)]
    uuid: String,
    /// Hashing threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_format(s: &str) -> anyhow::Result<Format> {
    Ok(match s {
        "raw" => Format::Raw,
        "vhd" => Format::Vhd,
        "gcp" => Format::Gcp,
        "vmdk" => Format::Vmdk,
        other => anyhow::bail!("unknown format {other:?}: expected raw, vhd, gcp or vmdk"),
    })
}

fn parse_uuid(s: &str) -> anyhow::Result<[u8; 16]> {
    let bytes = hex::decode(s.replace('-', "")).context("UUID is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("UUID must be 16 bytes"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Build(args) => build(args),
        Cmd::Boot(args) => {
            let out = args.out.clone();
            let serial = args.serial.clone();
            boot(&out, boot_config(args), serial)
        }
        Cmd::Vhd { raw, vhd } => write_vhd(&raw, &vhd),
        Cmd::Verity(args) => write_verity(args),
    }
}

/// `build`: loads the config, applies the command-line overrides and runs the pipeline.
fn build(args: BuildArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(&args.config)?;
    cfg.overlays.extend(args.overlays);
    if !args.formats.is_empty() {
        cfg.formats = args.formats;
    }
    if let Some(p) = args.profile {
        cfg.profile = p;
    }
    let cache = DebCache::new(args.cache.unwrap_or_else(DebCache::default_dir))?;
    let progress = Spinners::new(!args.json);
    let report = pipeline::build(&cfg, &args.out, &cache, &progress)
        .with_context(|| format!("building {}", args.config.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        summary(&report);
    }
    Ok(())
}

/// `boot`: the QEMU settings from the command line.
fn boot_config(args: BootArgs) -> image_builder::boot::BootConfig {
    let mut cfg = image_builder::boot::BootConfig::new(args.out.join("disk.raw"));
    cfg.accel = args.accel;
    cfg.timeout = std::time::Duration::from_secs(args.timeout);
    cfg.cpu = args.cpu;
    cfg.cpus = args.cpus;
    cfg.disk_bus = args.disk_bus;
    if let Some(c) = args.ovmf_code {
        cfg.ovmf_code = c;
    }
    if let Some(v) = args.ovmf_vars {
        cfg.ovmf_vars = v;
    }
    cfg.extra_args = args.qemu_args;
    cfg
}

/// `vhd`: a fixed VHD with an ID derived from the raw disk's size.
fn write_vhd(raw: &std::path::Path, vhd: &std::path::Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    let id = image_builder::measure::sha256(format!("cvm-vhd\0{size}").as_bytes());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(946_684_800);
    image_builder::formats::write_vhd(raw, vhd, epoch, &id[..16].try_into()?)?;
    Ok(())
}

/// `verity`: formats the hash tree and prints the root hash like `veritysetup format`.
fn write_verity(args: VerityArgs) -> anyhow::Result<()> {
    let params = verity::VerityParams::new(
        hex::decode(&args.salt).context("salt is not hex")?,
        parse_uuid(&args.uuid)?,
    );
    let tree = verity::format(
        &args.data,
        &args.hash,
        &params,
        args.threads.unwrap_or_else(verity::default_threads),
    )?;
    println!("Root hash:\t{}", hex::encode(tree.root_hash));
    println!("Data blocks:\t{}", tree.data_blocks);
    Ok(())
}

/// Progress as one spinner line per step on stderr (hidden when stderr is not a terminal).
struct Spinners {
    enabled: bool,
    current: std::cell::RefCell<Option<indicatif::ProgressBar>>,
}

impl Spinners {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            current: std::cell::RefCell::new(None),
        }
    }
}

impl Progress for Spinners {
    fn start(&self, step: &str) {
        if !self.enabled {
            return;
        }
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!("{step}..."));
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        if pb.is_hidden() {
            eprintln!("{step}...");
        }
        *self.current.borrow_mut() = Some(pb);
    }

    fn finish(&self, step: &str, detail: &str) {
        if let Some(pb) = self.current.borrow_mut().take() {
            let msg = format!("{step}: done {detail}");
            if pb.is_hidden() {
                eprintln!("{msg}");
            }
            pb.finish_with_message(msg);
        }
    }
}

fn summary(r: &BuildReport) {
    println!("Built {} in {}", r.name, r.out_dir.display());
    println!("  verity root hash  {}", r.root_hash);
    println!("  kernel cmdline    {}", r.kernel_cmdline);
    if r.kernel_cmdline.split(' ').any(|w| w == "cvm.verity=off") {
        println!("  WARNING           dm-verity OFF (verity = false): the root is not integrity-checked; a benchmark/diagnosis image, never deploy it");
    }
    for (name, size) in &r.files {
        println!("  {name:<18}{:>10.1} MiB", *size as f64 / (1 << 20) as f64);
    }
    let mut pcrs: Vec<_> = r.measurements.pcrs.iter().collect();
    pcrs.sort_by_key(|(k, _)| k.parse::<u32>().unwrap_or(u32::MAX));
    for (pcr, v) in pcrs {
        println!("  PCR {pcr:<3} {} ({})", v.sha256, v.source);
    }
    println!(
        "  build time        {:.1} s",
        pipeline::total_time(r).as_secs_f64()
    );
}

fn boot(
    out: &std::path::Path,
    cfg: image_builder::boot::BootConfig,
    serial: Option<PathBuf>,
) -> anyhow::Result<()> {
    use image_builder::boot;
    use image_builder::measure::Measurements;
    let m: Measurements = serde_json::from_slice(
        &std::fs::read(out.join("measurements.json"))
            .with_context(|| format!("reading {}/measurements.json", out.display()))?,
    )?;
    eprintln!("booting {} (serial console below)...", cfg.disk.display());
    let outcome = boot::boot(&cfg, |s| {
        s.contains("CVM-BOOT-DONE") || s.contains("CVM-AGENT-START") || s.contains("Kernel panic")
    })?;
    if let Some(path) = serial {
        std::fs::write(&path, &outcome.serial)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for line in outcome.serial.lines().filter(|l| l.len() < 300) {
        eprintln!("| {line}");
    }
    let seen = boot::parse_pcr_lines(&outcome.serial);
    if seen.is_empty() {
        anyhow::bail!(
            "the guest printed no PCRs (timed out: {})",
            outcome.timed_out
        );
    }
    let mut ok = true;
    for (pcr, value) in &seen {
        let predicted = m.pcrs.get(pcr).map(|p| p.sha256.as_str());
        let verdict = match predicted {
            Some(p) if p == value => "matches prediction",
            Some(_) => {
                ok = false;
                "DIFFERS from prediction"
            }
            None => "observed (not predicted)",
        };
        println!("PCR {pcr:<3} {value} {verdict}");
    }
    println!("boot took {:.0} s", outcome.elapsed.as_secs_f64());
    if !ok {
        anyhow::bail!("observed PCRs differ from measurements.json");
    }
    Ok(())
}

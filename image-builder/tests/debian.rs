//! The production `debian` image (`images/debian.toml`): its initrd carries the disk and network
//! drivers of every target, and it boots with the disk on NVMe and on virtio-scsi, with a
//! non-virtio NIC, until the agent answers `/health` over a forwarded port.
//!
//! One shared build (mmdebstrap of Debian 13, 2-4 min, needs the release agent:
//! `cargo build --release -p cvm-agent`) with the example workload as its seed. `CVM_DEBIAN_OUT=
//! <dir>` reuses a finished build instead: `cvm-image build --config
//! image-builder/images/debian.toml --overlay <seed> --out <dir>`, where `<seed>` holds
//! `usr/share/cvm/workload` (what `seed_overlay` makes).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use image_builder::boot::{self, BootConfig, DiskBus};
use image_builder::config::Config;
use image_builder::deb::DebCache;
use image_builder::kmod;
use image_builder::pipeline::{self, Quiet};

/// The drivers each target needs in the initrd (storage and network), and the verity root's.
const DRIVERS: &[(&str, &[&str])] = &[
    ("azure", &["hv_vmbus", "hv_storvsc", "hv_netvsc", "sd_mod"]),
    ("aws", &["nvme", "ena"]),
    ("gcp", &["nvme", "gve", "virtio_scsi", "sd_mod"]),
    (
        "qemu",
        &[
            "virtio_blk",
            "virtio_pci",
            "virtio_net",
            "virtio_scsi",
            "sd_mod",
        ],
    ),
    ("root", &["erofs", "dm_verity", "dm_crypt"]),
];

struct Built {
    _dir: Option<tempfile::TempDir>,
    out: PathBuf,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        if let Some(out) = std::env::var_os("CVM_DEBIAN_OUT") {
            let out = PathBuf::from(out);
            assert!(
                out.join("disk.raw").is_file() && out.join("initrd.cpio").is_file(),
                "CVM_DEBIAN_OUT={} holds no finished build",
                out.display()
            );
            return Built { _dir: None, out };
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian.toml");
        let cfg = Config::load(&path).expect("images/debian.toml loads");
        let agent = cfg
            .agent
            .clone()
            .expect("the debian image carries the agent");
        assert!(
            agent.is_file(),
            "{} missing: run `cargo build --release -p cvm-agent` first",
            agent.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut cfg = cfg;
        cfg.overlays.push(seed_overlay(&dir.path().join("seed")));
        let cache = DebCache::new(DebCache::default_dir()).expect("cache dir");
        pipeline::build(&cfg, &out, &cache, &Quiet)
            .unwrap_or_else(|e| panic!("debian image build failed: {e}"));
        Built {
            _dir: Some(dir),
            out,
        }
    })
}

/// An overlay with the example workload as the image's seed (`usr/share/cvm/workload`, copied to
/// `/data/workload` on first boot): `workload/` without `secrets/`, plus its image archive.
/// Equivalent by hand: `cvm-image build ... --overlay <this dir>`.
pub fn seed_overlay(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let seed = dir.join("usr/share/cvm/workload");
    std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo.join("workload"))
        .arg(&seed)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(seed.join("secrets")).unwrap();
    let status = Command::new(repo.join("scripts/make-example-image.sh"))
        .arg(seed.join("hello.tar"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "make-example-image.sh failed");
    dir.to_path_buf()
}

/// Unpacks `initrd.cpio` into a new directory.
fn unpack_initrd(initrd: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames", "-D"])
        .arg(dir.path())
        .stdin(std::fs::File::open(initrd).unwrap())
        .status()
        .expect("cpio runs");
    assert!(
        status.success(),
        "cpio could not unpack {}",
        initrd.display()
    );
    dir
}

fn stem(file: &str) -> Option<String> {
    let name = file.rsplit('/').next()?;
    Some(kmod::normalize(name.split_once(".ko")?.0))
}

#[test]
fn initrd_carries_every_cloud_driver() {
    let b = built();
    let dir = unpack_initrd(&b.out.join("initrd.cpio"));
    let mods = dir.path().join("lib/modules");
    let files: BTreeSet<String> = std::fs::read_dir(&mods)
        .unwrap()
        .filter_map(|e| stem(e.ok()?.file_name().to_str()?))
        .collect();
    let builtin: BTreeSet<String> = std::fs::read_to_string(mods.join("modules.builtin"))
        .expect("the initrd carries the kernel's modules.builtin")
        .lines()
        .filter_map(stem)
        .collect();
    let present = |m: &str| files.contains(m) || builtin.contains(m);

    let missing: Vec<String> = DRIVERS
        .iter()
        .flat_map(|(target, drivers)| {
            drivers
                .iter()
                .filter(|d| !present(d))
                .map(move |d| format!("{target}: {d}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "drivers neither in the initrd nor built in: {}",
        missing.join(", ")
    );

    // Every module's dependencies are there too, and the init loads each after them.
    let order: Vec<String> = std::fs::read_to_string(dir.path().join("etc/cvm-modules"))
        .unwrap()
        .lines()
        .filter_map(stem)
        .collect();
    assert_eq!(
        order.iter().cloned().collect::<BTreeSet<_>>(),
        files,
        "/etc/cvm-modules lists exactly the modules in the initrd"
    );
    let mut unmet = Vec::new();
    for (i, m) in order.iter().enumerate() {
        let elf = std::fs::read(mods.join(format!("{m}.ko")))
            .or_else(|_| std::fs::read(mods.join(format!("{}.ko", m.replace('_', "-")))))
            .unwrap_or_else(|e| panic!("{m}.ko in the initrd: {e}"));
        for (k, v) in kmod::modinfo(&elf).unwrap() {
            if k != "depends" {
                continue;
            }
            for dep in v.split(',').filter(|d| !d.is_empty()).map(kmod::normalize) {
                if !builtin.contains(&dep) && !order[..i].contains(&dep) {
                    unmet.push(format!("{m} needs {dep}"));
                }
            }
        }
    }
    assert!(
        unmet.is_empty(),
        "dependencies missing or loaded later: {unmet:?}"
    );

    // The serial console on ttyS0 (every cloud's) needs no module: the 8250 UART is built in.
    assert!(builtin.contains("8250"), "8250 serial driver not built in");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.out.join("measurements.json")).unwrap()).unwrap();
    let cmdline = m["kernel_cmdline"].as_str().unwrap();
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    eprintln!(
        "initrd: {} modules, {} of the listed drivers built in",
        files.len(),
        DRIVERS
            .iter()
            .flat_map(|(_, d)| d.iter())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|d| builtin.contains(**d))
            .count()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET https://127.0.0.1:<port>/health` (the agent's certificate is self-made: not checked here).
fn health(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sfk", "--max-time", "3"])
        .arg(format!("https://127.0.0.1:{port}/health"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Boots the image with its disk on `bus` and a vmxnet3 NIC (the cloud kernel has no e1000; its
/// non-virtio NICs are the clouds' and VMware's), until the agent answers over the forwarded port.
fn boot_until_agent_answers(bus: DiskBus) {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("api-token");
    std::fs::write(&token, "cvm-test-token-0123456789abcdef0123456789abcdef").unwrap();
    let port = free_port();
    let mut cfg = BootConfig::new(b.out.join("disk.raw"));
    cfg.disk_bus = bus;
    cfg.memory_mib = 2048;
    cfg.timeout = Duration::from_secs(480);
    cfg.extra_args = vec![
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8000"),
        "-device".into(),
        "vmxnet3,netdev=net0,romfile=".into(),
        "-fw_cfg".into(),
        format!("name=opt/cvm/api-token,file={}", token.display()),
    ];
    let answer = Cell::new(None::<String>);
    let outcome = boot::boot(&cfg, |serial| {
        // Ask only once systemd has started the agent: curl every 250 ms before that is waste.
        if !serial.contains("cvm-agent") {
            return false;
        }
        if let Some(body) = health(port) {
            answer.set(Some(body));
            return true;
        }
        false
    })
    .unwrap();
    let s = &outcome.serial;
    let answer = answer.take();
    assert!(
        answer.is_some(),
        "{bus:?}: the agent never answered /health (timed out: {}, exited: {}); serial:\n{}",
        outcome.timed_out,
        outcome.exited,
        tail(s)
    );
    assert!(
        s.contains("opened (ephemeral key) and mounted on /data"),
        "{bus:?}: the data partition was not opened (LUKS2, ephemeral key) and mounted:\n{}",
        tail(s)
    );
    assert!(
        s.contains("API token from fw_cfg"),
        "{bus:?}: no token from fw_cfg:\n{}",
        tail(s)
    );
    // Containers are kept away from the metadata service (and the token in the user data).
    assert!(
        s.contains("Finished \u{1b}[0;1;39mcvm-metadata-guard")
            || s.contains("Finished cvm-metadata-guard"),
        "{bus:?}: the metadata guard was not loaded:\n{}",
        tail(s)
    );
    eprintln!(
        "{bus:?}: agent answered /health after {:.0} s: {}",
        outcome.elapsed.as_secs_f64(),
        answer.unwrap_or_default().trim()
    );
}

#[test]
fn boots_on_nvme_and_virtio_scsi_and_the_agent_answers() {
    // One boot at a time: each takes a core for 1-3 minutes under TCG.
    for bus in [DiskBus::Nvme, DiskBus::VirtioScsi] {
        boot_until_agent_answers(bus);
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| l.len() < 400).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The data partition's byte range in a disk image (`sfdisk --json`).
fn data_partition(disk: &Path) -> std::ops::Range<u64> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .expect("sfdisk (fdisk package)");
    assert!(out.status.success(), "sfdisk --json {}", disk.display());
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let data = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "data")
        .expect("a partition named data");
    let start = data["start"].as_u64().unwrap() * sector;
    start..start + data["size"].as_u64().unwrap() * sector
}

/// The host's view of `/data` after the workload ran: ciphertext only. The seed workload
/// (its config text, and `hello.tar` with the busybox binary) was copied to `/data` and Podman
/// unpacked the image there; none of it may appear in clear on the disk file.
#[test]
fn the_host_sees_no_plaintext_on_the_data_partition() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.raw");
    let copied = Command::new("cp")
        .args(["--sparse=always"])
        .arg(b.out.join("disk.raw"))
        .arg(&disk)
        .status()
        .unwrap();
    assert!(copied.success());
    let token = tmp.path().join("api-token");
    std::fs::write(&token, "cvm-test-token-0123456789abcdef0123456789abcdef").unwrap();
    let port = free_port();
    let mut cfg = BootConfig::new(disk.clone());
    cfg.snapshot = false;
    cfg.memory_mib = 2048;
    cfg.timeout = Duration::from_secs(600);
    cfg.extra_args = vec![
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8000"),
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
        "-fw_cfg".into(),
        format!("name=opt/cvm/api-token,file={}", token.display()),
    ];
    // Once the workload runs, wait past the kernel's writeback delay (30 s) so what it wrote is
    // on the disk file when QEMU stops.
    let running_since = Cell::new(None::<std::time::Instant>);
    let outcome = boot::boot(&cfg, |serial| {
        if let Some(since) = running_since.get() {
            return since.elapsed() > Duration::from_secs(40);
        }
        if serial.contains("cvm-agent") && health(port).is_some_and(|h| h.contains("running")) {
            running_since.set(Some(std::time::Instant::now()));
        }
        false
    })
    .unwrap();
    assert!(
        running_since.get().is_some(),
        "the workload never ran (timed out: {}):\n{}",
        outcome.timed_out,
        tail(&outcome.serial)
    );
    let range = data_partition(&disk);
    let bytes = std::fs::read(&disk).unwrap();
    let data = &bytes[range.start as usize..range.end as usize];
    let written = data.iter().filter(|&&b| b != 0).count();
    assert!(
        written > 8 << 20,
        "only {written} non-zero bytes on the data partition: did the workload write at all?"
    );
    for plaintext in [
        &b"measured into PCR 23 before the workload starts"[..],
        b"hello from a measured workload",
        b"BusyBox v1.",
        b"cvm-example/hello",
    ] {
        assert!(
            !data.windows(plaintext.len()).any(|w| w == plaintext),
            "{:?} is readable on the data partition",
            String::from_utf8_lossy(plaintext)
        );
    }
    // The same text is on the disk in clear where it is not secret: the busybox binary in the
    // image archive of the seed, inside the (compressed, public) verity root, shows the search
    // would find it.
    assert!(
        bytes.windows(11).any(|w| w == b"BusyBox v1."),
        "positive control: no busybox text anywhere on the disk"
    );
}

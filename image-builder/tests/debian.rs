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

/// What `/health` says while `/data` waits for its pushed key.
const LOCKED: &str = "locked: /data waits";

/// A data VM's boot: the test's copy of the disk (written, not snapshotted), its API token and
/// `pushed` data mode in fw_cfg, the agent's port forwarded to `port`.
fn data_boot_config(disk: &Path, fw_cfg: &Path, port: u16) -> BootConfig {
    let mut cfg = BootConfig::new(disk.to_path_buf());
    cfg.snapshot = false;
    cfg.memory_mib = 2048;
    cfg.timeout = Duration::from_secs(600);
    cfg.extra_args = vec![
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8000"),
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
        "-fw_cfg".into(),
        format!(
            "name=opt/cvm/api-token,file={}",
            fw_cfg.join("token").display()
        ),
        "-fw_cfg".into(),
        format!(
            "name=opt/cvm/data-unlock,file={}",
            fw_cfg.join("mode").display()
        ),
    ];
    cfg
}

/// `POST /unlock` with the data key (what `cvm-cli unlock` sends after verifying the VM; the
/// verification is tested elsewhere): the status and the body.
fn unlock(port: u16, fw_cfg: &Path) -> (u16, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"printf '{"key":"%s"}' "$(base64 -w0 "$1/key")" | curl -sk --max-time 500 \
                -H "Authorization: Bearer $(cat "$1/token")" -H 'Content-Type: application/json' \
                --data-binary @- -w '\n%{http_code}' "https://127.0.0.1:$2/unlock""#,
        )
        .arg("unlock")
        .arg(fw_cfg)
        .arg(port.to_string())
        .output()
        .expect("sh and curl run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The LUKS2 data segment's offset in the partition, from the header's JSON area (at 4 KiB).
fn luks2_data_offset(partition: &[u8]) -> u64 {
    assert_eq!(
        &partition[..6],
        b"LUKS\xba\xbe",
        "the data partition holds no LUKS2 header"
    );
    let json = &partition[4096..4096 + 12288];
    let end = json.iter().position(|&b| b == 0).unwrap_or(json.len());
    let header: serde_json::Value = serde_json::from_slice(&json[..end]).unwrap();
    let offset = header["segments"]["0"]["offset"].as_str().unwrap();
    offset.parse().unwrap()
}

/// Flips one byte in every written 4 KiB block of the data segment past its first 32 MiB (the
/// dm-integrity superblock and journal, and the start of the file system, stay as they were):
/// what a host that edits the disk between boots does. Returns how many blocks it changed.
fn flip_data_blocks(disk: &Path, partition: std::ops::Range<u64>) -> usize {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut head = vec![0u8; 16 << 10];
    file.seek(SeekFrom::Start(partition.start)).unwrap();
    file.read_exact(&mut head).unwrap();
    let first = partition.start + luks2_data_offset(&head) + (32 << 20);
    let mut block = [0u8; 4096];
    let mut flipped = 0;
    for at in (first..partition.end).step_by(4096) {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.read_exact(&mut block).unwrap();
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        block[17] ^= 0x01;
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&block).unwrap();
        flipped += 1;
    }
    file.sync_all().unwrap();
    flipped
}

/// `pushed` mode over two boots of a copy of the production image, with a key made for this run.
/// Boot 1: unlock (first boot: the partition is formatted), the seed workload (its config text,
/// and `hello.tar` with the busybox binary) is copied to `/data` and Podman unpacks its image
/// there; none of it may appear in clear on the disk file. Then the host flips bytes in the
/// written blocks of the encrypted area. Boot 2: the same key must not yield changed data: the
/// unlock fails with dm-crypt's integrity errors on the console, and the workload never runs.
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
    let fw_cfg = tmp.path();
    std::fs::write(
        fw_cfg.join("token"),
        "cvm-test-token-0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::fs::write(fw_cfg.join("mode"), "pushed").unwrap();
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut key))
        .unwrap();
    std::fs::write(fw_cfg.join("key"), key).unwrap();

    // Boot 1. Once the workload runs, wait past the kernel's writeback delay (30 s) so what it
    // wrote is on the disk file when QEMU stops.
    let port = free_port();
    let unlocked = Cell::new(None::<(u16, String)>);
    let running_since = Cell::new(None::<std::time::Instant>);
    let outcome = boot::boot(&data_boot_config(&disk, fw_cfg, port), |serial| {
        if let Some(since) = running_since.get() {
            return since.elapsed() > Duration::from_secs(40);
        }
        if !serial.contains("cvm-agent") {
            return false;
        }
        let Some(health) = health(port) else {
            return false;
        };
        if health.contains(LOCKED) {
            let answer = unlock(port, fw_cfg);
            let refused = answer.0 != 200;
            unlocked.set(Some(answer));
            return refused;
        }
        if health.contains("running") {
            running_since.set(Some(std::time::Instant::now()));
        }
        false
    })
    .unwrap();
    let answer = unlocked.take();
    assert!(
        running_since.get().is_some(),
        "boot 1: the workload never ran (unlock: {answer:?}, timed out: {}):\n{}",
        outcome.timed_out,
        tail(&outcome.serial)
    );
    assert!(
        outcome.serial.contains("first boot: ") && outcome.serial.contains("opened (pushed key)"),
        "boot 1: /data was not formatted and opened with the pushed key:\n{}",
        tail(&outcome.serial)
    );
    let boot1 = outcome.elapsed;

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
    drop(bytes);

    let flipped = flip_data_blocks(&disk, range);
    assert!(flipped > 1000, "only {flipped} written blocks to flip");

    // Boot 2: the same key, the changed disk.
    let port = free_port();
    let unlocked = Cell::new(None::<(u16, String)>);
    let unlocked_at = Cell::new(None::<std::time::Instant>);
    let outcome = boot::boot(&data_boot_config(&disk, fw_cfg, port), |serial| {
        if let Some(at) = unlocked_at.get() {
            // Let the console catch up with the kernel's and cvm-data's messages.
            return at.elapsed() > Duration::from_secs(10);
        }
        if !serial.contains("cvm-agent") || !health(port).is_some_and(|h| h.contains(LOCKED)) {
            return false;
        }
        unlocked.set(Some(unlock(port, fw_cfg)));
        unlocked_at.set(Some(std::time::Instant::now()));
        false
    })
    .unwrap();
    let serial = &outcome.serial;
    let (status, body) = unlocked.take().unwrap_or_else(|| {
        panic!(
            "boot 2: the agent never waited locked (timed out: {}):\n{}",
            outcome.timed_out,
            tail(serial)
        )
    });
    assert!(
        status != 200,
        "boot 2: /data opened on the changed disk ({status}: {body})"
    );
    assert!(
        serial.contains("INTEGRITY AEAD ERROR"),
        "boot 2: no dm-crypt integrity error on the console:\n{}",
        tail(serial)
    );
    let why: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains("cvm-data: ") && !l.contains("Started"))
        .collect();
    eprintln!(
        "boot 1 (format, unlock, workload) {:.0} s; {flipped} blocks flipped; boot 2 refused in \
         {:.0} s: {status} {}\n{} integrity errors on the console; {}",
        boot1.as_secs_f64(),
        outcome.elapsed.as_secs_f64(),
        body.trim(),
        serial.matches("INTEGRITY AEAD ERROR").count(),
        why.join(" | ")
    );
}

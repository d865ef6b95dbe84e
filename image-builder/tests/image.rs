//! End-to-end tests of the `tiny` image, sharing one build: reproducibility, the disk layout,
//! the output formats, and real boots under QEMU + OVMF + swtpm (TCG) whose PCRs must equal the
//! offline prediction, plus a tampered root that must not boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use image_builder::boot::{self, BootConfig};
use image_builder::config::Config;
use image_builder::deb::DebCache;
use image_builder::pipeline::{self, BuildReport, Quiet};

struct Built {
    _dir: tempfile::TempDir,
    out: PathBuf,
    report: BuildReport,
}

fn config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/tiny.toml");
    Config::load(&path).expect("images/tiny.toml loads")
}

fn cache() -> DebCache {
    DebCache::new(DebCache::default_dir()).expect("cache dir")
}

fn build_into(dir: &Path) -> BuildReport {
    pipeline::build(&config(), dir, &cache(), &Quiet)
        .unwrap_or_else(|e| panic!("tiny image build failed: {e}"))
}

/// The one shared build.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let report = build_into(&out);
        Built {
            _dir: dir,
            out,
            report,
        }
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn second_build_is_byte_identical() {
    let a = built();
    let dir = tempfile::tempdir().unwrap();
    let b = build_into(&dir.path().join("out"));
    assert_eq!(a.report.root_hash, b.root_hash);
    for name in [
        "root.erofs",
        "root.verity",
        "initrd.cpio",
        "uki.efi",
        "esp.img",
        "disk.raw",
        "disk.vhd",
        "disk.tar.gz",
        "disk.vmdk",
        "measurements.json",
    ] {
        let x = std::fs::read(a.out.join(name)).unwrap();
        let y = std::fs::read(dir.path().join("out").join(name)).unwrap();
        assert!(x == y, "{name} differs between two builds");
    }
}

#[test]
fn gpt_layout_is_what_the_initrd_expects() {
    let b = built();
    let dump = run(Command::new("sfdisk")
        .arg("--json")
        .arg(b.out.join("disk.raw")));
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    assert_eq!(parts.len(), 4);
    let rh = &b.report.root_hash;
    let uuid = |h: &str| {
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
        .to_uppercase()
    };
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[1]["uuid"], uuid(&rh[..32]));
    assert_eq!(parts[2]["type"], "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    assert_eq!(parts[2]["uuid"], uuid(&rh[32..]));
    // sfdisk also checks the backup header and both CRCs.
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(b.out.join("disk.raw"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && text.contains("No errors detected"),
        "{text}"
    );
    // The ESP holds the UKI at the removable-media path.
    let esp = &b.report.partitions[0];
    let listing = run(Command::new("mdir")
        .arg("-i")
        .arg(format!(
            "{}@@{}",
            b.out.join("disk.raw").display(),
            esp.offset
        ))
        .arg("::EFI/BOOT"));
    assert!(
        listing.contains("BOOTX64  EFI") || listing.contains("BOOTX64.EFI"),
        "{listing}"
    );
}

fn qemu_info(path: &Path, fmt: &str) -> serde_json::Value {
    // `qemu-img check` supports vmdk, not vpc or raw.
    if fmt == "vmdk" {
        run(Command::new("qemu-img")
            .args(["check", "-f", fmt])
            .arg(path));
    }
    serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json", "-f", fmt])
        .arg(path)))
    .unwrap()
}

#[test]
fn output_formats_are_valid() {
    let b = built();
    let raw_size = std::fs::metadata(b.out.join("disk.raw")).unwrap().len();
    assert_eq!(raw_size % (1 << 20), 0, "virtual size must be whole MiB");
    // qemu-img check does not support raw; info does.
    let raw: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "raw"])
        .arg(b.out.join("disk.raw"))))
    .unwrap();
    assert_eq!(raw["virtual-size"], raw_size);
    let vhd = qemu_info(&b.out.join("disk.vhd"), "vpc");
    assert_eq!(vhd["virtual-size"], raw_size);
    assert_eq!(
        std::fs::metadata(b.out.join("disk.vhd")).unwrap().len(),
        raw_size + 512
    );
    let vmdk = qemu_info(&b.out.join("disk.vmdk"), "vmdk");
    assert_eq!(vmdk["virtual-size"], raw_size);
    assert_eq!(
        vmdk["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    // The VHD and VMDK hold exactly the raw disk.
    run(Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(b.out.join("disk.vhd"))
        .arg(b.out.join("disk.raw")));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "raw"])
        .arg(b.out.join("disk.vmdk"))
        .arg(b.out.join("disk.raw")));

    // GCP: one member `disk.raw`, GNU sparse, unpacking to the same bytes.
    let listing = run(Command::new("tar")
        .args(["-tvzf"])
        .arg(b.out.join("disk.tar.gz")));
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.trim_end().ends_with(" disk.raw"), "{listing}");
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .args(["-xzf"])
        .arg(b.out.join("disk.tar.gz"))
        .arg("-C")
        .arg(dir.path()));
    assert!(
        std::fs::read(dir.path().join("disk.raw")).unwrap()
            == std::fs::read(b.out.join("disk.raw")).unwrap()
    );
    let gz = std::fs::read(b.out.join("disk.tar.gz")).unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate_reader(&gz), &mut tar).unwrap();
    assert_eq!(tar[156], b'S', "member is not an oldgnu sparse file");
    assert_eq!(
        &tar[257..265],
        b"ustar  \0",
        "not the GNU (oldgnu) header magic"
    );
}

/// gzip -dc, without a gzip crate.
fn flate_reader(gz: &[u8]) -> std::io::Cursor<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = gz.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    std::io::Cursor::new(out.stdout)
}

#[test]
fn kernel_authenticode_matches_its_signature() {
    // Debian signs vmlinuz; the signature's SpcIndirectDataContent carries the Authenticode
    // SHA-256 that sbsign computed. Ours must agree (PCR 4 depends on it).
    let k = pipeline::kernel(&config(), &cache()).unwrap();
    let bytes = std::fs::read(&k.vmlinuz).unwrap();
    let ours = image_builder::pe::authenticode_sha256(&bytes).unwrap();
    let pe = image_builder::pe::Pe::parse(&bytes).unwrap();
    let (off, size) = pe.cert_table.expect("Debian's kernel is signed");
    let cert = &bytes[off as usize..(off + size) as usize];
    // DigestInfo { sha256 OID, NULL, OCTET STRING(32) }.
    let prefix = hex::decode("0609608648016503040201050004 20".replace(' ', "")).unwrap();
    let at = cert
        .windows(prefix.len())
        .position(|w| w == prefix.as_slice())
        .expect("sha256 DigestInfo")
        + prefix.len();
    assert_eq!(hex::encode(&cert[at..at + 32]), hex::encode(ours));
}

fn boot_cfg(disk: &Path) -> BootConfig {
    let mut c = BootConfig::new(disk);
    c.timeout = Duration::from_secs(420);
    c
}

#[test]
fn boots_with_predicted_pcrs() {
    let b = built();
    let outcome = boot::boot(&boot_cfg(&b.out.join("disk.raw")), |s| {
        s.contains("CVM-BOOT-DONE")
    })
    .unwrap();
    let s = &outcome.serial;
    assert!(!outcome.timed_out, "boot timed out; serial:\n{}", tail(s));
    assert!(
        s.contains("CVM-MARKER cvm-tiny-root-marker-5e1f"),
        "no marker from the verity root:\n{}",
        tail(s)
    );
    let seen = boot::parse_pcr_lines(s);
    for pcr in ["4", "9", "11", "12"] {
        let predicted = &b.report.measurements.pcrs[pcr].sha256;
        assert_eq!(
            seen.get(pcr),
            Some(predicted),
            "PCR {pcr}: guest vs prediction"
        );
    }
    eprintln!("boot took {:.0} s", outcome.elapsed.as_secs_f64());
}

#[test]
fn flipped_root_byte_stops_the_boot() {
    let b = built();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("tampered.raw");
    std::fs::copy(b.out.join("disk.raw"), &disk).unwrap();
    let root = b
        .report
        .partitions
        .iter()
        .find(|p| p.name == "root")
        .unwrap();
    // Block 0 holds the erofs superblock (at 1024), which the mount must read.
    let at = root.offset + 1024 + 8;
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&disk, bytes).unwrap();
    let outcome = boot::boot(&boot_cfg(&disk), |s| {
        s.contains("CVM-MARKER") || s.contains("end Kernel panic")
    })
    .unwrap();
    let s = &outcome.serial;
    assert!(
        !s.contains("CVM-MARKER"),
        "tampered root booted:\n{}",
        tail(s)
    );
    assert!(
        s.contains("verity") && s.contains("corrupted"),
        "no verity error:\n{}",
        tail(s)
    );
    assert!(
        s.contains("Kernel panic"),
        "no panic after corruption:\n{}",
        tail(s)
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| l.len() < 400).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

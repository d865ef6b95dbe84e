//! `verity = false`, the benchmark/diagnosis switch: the `tiny` image built with and without it
//! has the same disk layout and the same root and verity partitions, but a command line with
//! `cvm.verity=off` in its UKI, hence other predicted PCRs 4 and 11; the no-verity image boots to
//! its root (its PCRs are the no-verity prediction) and the initrd warns loudly on the console.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use image_builder::boot::{self, BootConfig};
use image_builder::config::{Config, Format};
use image_builder::deb::DebCache;
use image_builder::pipeline::{self, BuildReport, Quiet};

struct Built {
    _dir: tempfile::TempDir,
    on: (PathBuf, BuildReport),
    off: (PathBuf, BuildReport),
}

fn build(dir: &Path, verity: bool) -> (PathBuf, BuildReport) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/tiny.toml");
    let mut cfg = Config::load(&path).expect("images/tiny.toml loads");
    cfg.formats = vec![Format::Raw];
    cfg.verity = verity;
    let out = dir.join(if verity { "on" } else { "off" });
    let cache = DebCache::new(DebCache::default_dir()).expect("cache dir");
    let report = pipeline::build(&cfg, &out, &cache, &Quiet)
        .unwrap_or_else(|e| panic!("tiny image build (verity = {verity}) failed: {e}"));
    (out, report)
}

/// The two builds, shared by the tests.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let on = build(dir.path(), true);
        let off = build(dir.path(), false);
        Built { _dir: dir, on, off }
    })
}

/// `sfdisk --json` of a disk: its partitions (type, start, size, name, uuid).
fn partitions(disk: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .expect("sfdisk runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn cmdline_says_verity_off_and_the_pcrs_differ() {
    let b = built();
    let (on, off) = (&b.on.1, &b.off.1);
    let words = |c: &str| c.split(' ').map(str::to_owned).collect::<Vec<_>>();
    assert!(
        !words(&on.kernel_cmdline).contains(&"cvm.verity=off".to_string()),
        "{}",
        on.kernel_cmdline
    );
    // The switch appends exactly ` cvm.verity=off`, after roothash=.
    assert_eq!(
        off.kernel_cmdline,
        format!("{} cvm.verity=off", on.kernel_cmdline)
    );
    assert_eq!(on.root_hash, off.root_hash, "the same root, the same hash");
    // The flag is in the UKI's .cmdline section (thus measured).
    let uki = std::fs::read(b.off.0.join("uki.efi")).unwrap();
    assert!(
        uki.windows(off.kernel_cmdline.len())
            .any(|w| w == off.kernel_cmdline.as_bytes()),
        "the UKI does not carry the no-verity command line"
    );
    for pcr in ["4", "11"] {
        let (a, z) = (&on.measurements.pcrs[pcr], &off.measurements.pcrs[pcr]);
        assert_ne!(
            a.sha256, z.sha256,
            "PCR {pcr} must tell the no-verity image from the verity image"
        );
    }
    // measurements.json (what golden values are made of) says the same.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.off.0.join("measurements.json")).unwrap()).unwrap();
    assert_eq!(
        json["pcrs"]["11"]["sha256"],
        off.measurements.pcrs["11"].sha256.as_str()
    );
}

#[test]
fn disk_layout_and_root_partitions_are_the_same() {
    let b = built();
    assert_eq!(
        b.on.1
            .partitions
            .iter()
            .map(|p| (&p.name, p.offset, p.size))
            .collect::<Vec<_>>(),
        b.off
            .1
            .partitions
            .iter()
            .map(|p| (&p.name, p.offset, p.size))
            .collect::<Vec<_>>()
    );
    let (on, off) = (
        partitions(&b.on.0.join("disk.raw")),
        partitions(&b.off.0.join("disk.raw")),
    );
    assert_eq!(on.len(), 4);
    assert_eq!(on.len(), off.len());
    for (x, y) in on.iter().zip(&off) {
        for field in ["type", "start", "size", "name"] {
            assert_eq!(x[field], y[field], "partition {field}: {x} vs {y}");
        }
    }
    // Root and verity partitions: the same identity (found by the root hash) and the same bytes.
    for i in [1, 2] {
        assert_eq!(on[i]["uuid"], off[i]["uuid"]);
    }
    for name in ["root.erofs", "root.verity"] {
        assert!(
            std::fs::read(b.on.0.join(name)).unwrap() == std::fs::read(b.off.0.join(name)).unwrap(),
            "{name} differs between the verity and the no-verity build"
        );
    }
    assert_eq!(
        std::fs::metadata(b.on.0.join("disk.raw")).unwrap().len(),
        std::fs::metadata(b.off.0.join("disk.raw")).unwrap().len()
    );
}

#[test]
fn no_verity_image_boots_to_its_root_with_a_warning() {
    let b = built();
    let mut cfg = BootConfig::new(b.off.0.join("disk.raw"));
    cfg.timeout = Duration::from_secs(420);
    let outcome = boot::boot(&cfg, |s| {
        s.contains("CVM-BOOT-DONE") || s.contains("Kernel panic")
    })
    .unwrap();
    let s = &outcome.serial;
    let tail = {
        let lines: Vec<&str> = s.lines().filter(|l| l.len() < 400).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(!outcome.timed_out, "boot timed out; serial:\n{tail}");
    assert!(
        s.contains(
            "cvm-initrd: WARNING: dm-verity OFF (cvm.verity=off): the root is not integrity-checked"
        ),
        "no warning from the initrd:\n{tail}"
    );
    assert!(
        s.contains("CVM-MARKER cvm-tiny-root-marker-5e1f"),
        "no marker from the root:\n{tail}"
    );
    assert!(
        !s.contains(", verity /dev/"),
        "dm-verity was opened:\n{tail}"
    );
    // The guest's PCRs are the no-verity prediction, not the verity image's.
    let seen = boot::parse_pcr_lines(s);
    for pcr in ["4", "11"] {
        let predicted = &b.off.1.measurements.pcrs[pcr].sha256;
        assert_eq!(
            seen.get(pcr),
            Some(predicted),
            "PCR {pcr}: guest vs prediction"
        );
        assert_ne!(seen.get(pcr), Some(&b.on.1.measurements.pcrs[pcr].sha256));
    }
    eprintln!("no-verity boot took {:.0} s", outcome.elapsed.as_secs_f64());
}

//! Secure Boot signing of the UKI with a user db key: `sbverify` accepts the result, the
//! Authenticode digest inside the signature equals ours (what firmware measures into PCR 4), the
//! prediction is made from the signed file, the ESP carries the signed UKI, and re-signing keeps
//! the measured digest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use image_builder::config::{Config, SecureBoot};
use image_builder::deb::DebCache;
use image_builder::{pe, pipeline, uki};

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Signed {
    dir: tempfile::TempDir,
    out: PathBuf,
    cfg: Config,
    report: pipeline::BuildReport,
}

/// Test keys (PK, KEK, db) and one signed `tiny` build, shared by the tests here.
fn signed() -> &'static Signed {
    static S: OnceLock<Signed> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for name in ["pk", "kek", "db"] {
            run(Command::new("openssl")
                .args([
                    "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                ])
                .args(["-subj", &format!("/CN=cvm test {name}/")])
                .arg("-keyout")
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.path().join(format!("{name}.crt"))));
        }
        let mut cfg =
            Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("images/tiny.toml")).unwrap();
        cfg.formats = vec![image_builder::config::Format::Raw];
        cfg.secure_boot = Some(SecureBoot {
            key: dir.path().join("db.key"),
            cert: dir.path().join("db.crt"),
        });
        let out = dir.path().join("out");
        let cache = DebCache::new(DebCache::default_dir()).unwrap();
        let report = pipeline::build(&cfg, &out, &cache, &pipeline::Quiet)
            .unwrap_or_else(|e| panic!("signed build failed: {e}"));
        Signed {
            dir,
            out,
            cfg,
            report,
        }
    })
}

#[test]
fn signed_uki_verifies_and_is_predicted_from_the_signed_file() {
    let s = signed();
    let (dir, out, cfg, report) = (&s.dir, &s.out, &s.cfg, &s.report);
    let cert = dir.path().join("db.crt");
    let signed_path = out.join("uki.efi");
    run(Command::new("sbverify")
        .arg("--cert")
        .arg(&cert)
        .arg(&signed_path));
    let signed = std::fs::read(&signed_path).unwrap();
    let ours = pe::authenticode_sha256(&signed).unwrap();
    let parsed = pe::Pe::parse(&signed).unwrap();
    let (off, size) = parsed
        .cert_table
        .expect("signed UKI has a certificate table");
    let sig = &signed[off as usize..(off + size) as usize];
    let prefix = hex::decode("060960864801650304020105000420").unwrap();
    let at = sig
        .windows(prefix.len())
        .position(|w| w == prefix.as_slice())
        .expect("sha256 DigestInfo")
        + prefix.len();
    assert_eq!(hex::encode(&sig[at..at + 32]), hex::encode(ours));

    let m = &report.measurements;
    assert!(m.secure_boot);
    assert_eq!(m.uki_authenticode_sha256, hex::encode(ours));
    let pcr4 = &m.pcrs["4"];
    assert_eq!(
        pcr4.events.len(),
        3,
        "with Secure Boot on, the stub's LoadImage of .linux is not measured"
    );
    assert_eq!(pcr4.events[2].sha256, hex::encode(ours));

    // The ESP holds exactly the signed file.
    let copy = dir.path().join("from-esp.efi");
    run(Command::new("mcopy")
        .arg("-i")
        .arg(out.join("esp.img"))
        .arg("::EFI/BOOT/BOOTX64.EFI")
        .arg(&copy));
    assert!(std::fs::read(&copy).unwrap() == signed);

    // sbsign stamps a signing time into the PKCS#7, so signature bytes differ between runs; the
    // Authenticode digest (which excludes the signature) and so every PCR do not.
    let again = dir.path().join("again.efi");
    uki::sign(
        &out.join("uki.unsigned.efi"),
        &again,
        cfg.secure_boot.as_ref().unwrap(),
    )
    .unwrap();
    let again = std::fs::read(&again).unwrap();
    assert_eq!(again.len(), signed.len());
    assert_eq!(pe::authenticode_sha256(&again).unwrap(), ours);
}

/// `virt-fw-vars` (PyPI `virt-firmware`; not packaged in Debian 12): from PATH, else installed
/// once into a venv in the build cache.
fn virt_fw_vars() -> PathBuf {
    if let Ok(out) = Command::new("virt-fw-vars").arg("--help").output() {
        if out.status.success() {
            return "virt-fw-vars".into();
        }
    }
    let venv = DebCache::default_dir().join("venv-virt-firmware");
    let bin = venv.join("bin/virt-fw-vars");
    if !bin.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", "virt-firmware==26.10"]));
    }
    bin
}

#[test]
fn boots_with_secure_boot_enforced_and_predicted_pcrs() {
    use image_builder::boot::{self, BootConfig};
    let s = signed();
    let k = |n: &str| s.dir.path().join(n);
    // An OVMF variable store with our PK, KEK and db enrolled and Secure Boot on.
    let vars = k("OVMF_VARS_sb.fd");
    let owner = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
    run(Command::new(virt_fw_vars())
        .args(["--input", boot::OVMF_VARS, "--output"])
        .arg(&vars)
        .args(["--set-pk", owner])
        .arg(k("pk.crt"))
        .args(["--add-kek", owner])
        .arg(k("kek.crt"))
        .args(["--add-db", owner])
        .arg(k("db.crt"))
        .arg("--secure-boot"));
    let mut cfg = BootConfig::new(s.out.join("disk.raw"));
    cfg.ovmf_code = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into();
    cfg.ovmf_vars = vars;
    cfg.extra_args = ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        .map(String::from)
        .to_vec();
    cfg.timeout = std::time::Duration::from_secs(420);
    let outcome = boot::boot(&cfg, |t| t.contains("CVM-BOOT-DONE")).unwrap();
    assert!(
        outcome.serial.contains("CVM-MARKER"),
        "signed image did not boot with Secure Boot on"
    );
    let seen = boot::parse_pcr_lines(&outcome.serial);
    for pcr in ["4", "9", "11", "12"] {
        assert_eq!(
            seen.get(pcr),
            Some(&s.report.measurements.pcrs[pcr].sha256),
            "PCR {pcr}"
        );
    }
    // The same disk must not boot with a db that does not hold our key (Secure Boot enforced).
    let other = k("OVMF_VARS_other.fd");
    run(Command::new(virt_fw_vars())
        .args(["--input", boot::OVMF_VARS, "--output"])
        .arg(&other)
        .args(["--set-pk", owner])
        .arg(k("pk.crt"))
        .args(["--add-kek", owner])
        .arg(k("kek.crt"))
        .args(["--add-db", owner])
        .arg(k("kek.crt"))
        .arg("--secure-boot"));
    cfg.ovmf_vars = other;
    cfg.timeout = std::time::Duration::from_secs(240);
    let refused = boot::boot(&cfg, |t| {
        t.contains("Access Denied") || t.contains("Linux version") || t.contains("CVM-BOOT-DONE")
    })
    .unwrap();
    assert!(
        !refused.serial.contains("Linux version"),
        "an image signed by an unknown key booted"
    );
    // OVMF: `BdsDxe: failed to load Boot0001 ...: Access Denied`.
    assert!(
        refused.serial.contains("Access Denied"),
        "firmware did not refuse the image:\n{}",
        refused.serial
    );
}

//! Secure Boot signing of the UKI with a user db key: `sbverify` accepts the result, the
//! Authenticode digest inside the signature equals ours (what firmware measures into PCR 4), the
//! prediction is made from the signed file, the ESP carries the signed UKI, and re-signing keeps
//! the measured digest.

use std::path::Path;
use std::process::Command;

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

#[test]
fn signed_uki_verifies_and_is_predicted_from_the_signed_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("db.key"), dir.path().join("db.crt"));
    run(Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args(["-subj", "/CN=cvm test db/"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let mut cfg =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("images/tiny.toml")).unwrap();
    cfg.formats = vec![image_builder::config::Format::Raw];
    cfg.secure_boot = Some(SecureBoot {
        key: key.clone(),
        cert: cert.clone(),
    });
    let out = dir.path().join("out");
    let cache = DebCache::new(DebCache::default_dir()).unwrap();
    let report = pipeline::build(&cfg, &out, &cache, &pipeline::Quiet)
        .unwrap_or_else(|e| panic!("signed build failed: {e}"));

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

//! The `cvm-image` binary on bad input: clear errors and a non-zero exit, never a panic.

use std::process::Command;

fn cvm_image(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cvm-image"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let (ok, text) = cvm_image(&[
        "build",
        "--config",
        "/nonexistent/image.toml",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("reading config"), "{text}");

    let cfg = d.join("image.toml");
    std::fs::write(&cfg, "initrd_dir = \"i\"\nname = \"bad name\"\n").unwrap();
    let (ok, text) = cvm_image(&[
        "build",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        d.join("o").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("image name"), "{text}");

    let (ok, text) = cvm_image(&[
        "build",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        "x",
        "--profile",
        "fedora",
    ]);
    assert!(!ok && text.contains("unknown profile"), "{text}");

    // A data file that is not a whole number of blocks.
    std::fs::write(d.join("data"), vec![0u8; 1000]).unwrap();
    let (ok, text) = cvm_image(&[
        "verity",
        d.join("data").to_str().unwrap(),
        d.join("hash").to_str().unwrap(),
        "--salt",
        "00",
        "--uuid",
        "12345678-9abc-def0-1234-56789abcdef0",
    ]);
    assert!(
        !ok && text.contains("multiple of the 4096-byte data block"),
        "{text}"
    );

    // A raw disk that is not a whole number of MiB makes no VHD.
    let (ok, text) = cvm_image(&[
        "vhd",
        d.join("data").to_str().unwrap(),
        d.join("x.vhd").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("whole number of MiB"), "{text}");
    assert!(!d.join("x.vhd").exists());

    let (ok, text) = cvm_image(&["boot", "--out", d.to_str().unwrap()]);
    assert!(!ok && text.contains("measurements.json"), "{text}");
}

//! The root tree: a glibc-linked Rust binary installed as the agent must run inside the busybox
//! root, which has no libc of its own: its `ldd` closure has to come along.

use std::path::Path;
use std::process::Command;

use image_builder::config::Config;
use image_builder::pipeline;

#[test]
fn agent_with_library_closure_runs_in_busybox_root() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("image.toml");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // This crate's own binary stands in for the agent: glibc-linked, like cvm-agent.
    let agent = env!("CARGO_BIN_EXE_cvm-image");
    std::fs::write(
        &cfg_path,
        format!(
            "initrd_dir = \"{}\"\noverlays = [\"{}\", \"{}\"]\nagent = \"{agent}\"\n",
            repo.join("initrd").display(),
            repo.join("rootfs/common").display(),
            repo.join("rootfs/tiny").display(),
        ),
    )
    .unwrap();
    let cfg = Config::load(&cfg_path).unwrap();
    let root = dir.path().join("root");
    pipeline::root_tree(&cfg, &root).unwrap();
    assert!(root.join("usr/bin/cvm-agent").is_file());
    assert!(
        root.join("sbin/init").symlink_metadata().unwrap().is_file(),
        "the overlay init, not busybox's init link"
    );
    assert!(root.join("etc/cvm-marker").is_file());

    // Run it confined to the tree (needs root, as the tests have in CI).
    let out = Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/cvm-agent", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent does not run in the root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cvm-image"));
    // And busybox works there too.
    let out = Command::new("chroot")
        .arg(&root)
        .args(["/bin/sh", "-c", "echo ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

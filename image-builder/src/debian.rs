//! The `debian` profile's root: `mmdebstrap` (`--mode=auto`: root mode as root, an unprivileged
//! user namespace otherwise) installs a Debian release with systemd, Podman and the cloud kernel;
//! then we make it fit a read-only verity root. Kernel, modules and EFI stub are taken from this
//! same tree, so they always match each other.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::config::Config;
use crate::error::{IoContext, Result};

/// systemd units that would extend PCR 11/15 (and set up TPM state) at boot, changing the values
/// we predict. Masked: the image's measurements are the build's alone.
const MASKED_UNITS: &[&str] = &[
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase-initrd.service",
    "systemd-pcrmachine.service",
    "systemd-pcrfs-root.service",
    "systemd-pcrfs@.service",
    "systemd-pcrextend@.service",
    "systemd-pcrnvdone.service",
    "systemd-tpm2-setup.service",
    "systemd-tpm2-setup-early.service",
    "systemd-pcrlock.service",
    "systemd-firstboot.service",
];

/// Runs mmdebstrap into `dest` (which must not exist).
pub fn bootstrap(cfg: &Config, dest: &Path, epoch: u64) -> Result<()> {
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--mode=auto", "--variant=minbase", "--quiet"])
            .arg(format!("--include={}", cfg.packages.join(",")))
            .arg("--dpkgopt=path-exclude=/usr/share/man/*")
            .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
            .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
            .arg("--dpkgopt=path-include=/usr/share/locale/locale.alias")
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg(&cfg.suite)
            .arg(dest)
            .arg(&cfg.mirror)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    Ok(())
}

fn write(root: &Path, rel: &str, content: &str) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).ctx("creating directory", parent)?;
    }
    std::fs::write(&p, content).ctx("writing", &p)
}

fn link(root: &Path, rel: &str, target: &str) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).ctx("creating directory", parent)?;
    }
    let _ = std::fs::remove_file(&p);
    symlink(target, &p).ctx("creating symlink", &p)
}

/// Adapts a bootstrapped tree to a read-only, measured root.
pub fn customize(root: &Path) -> Result<()> {
    // The kernel package's own initramfs is unused (our initrd is in the UKI).
    if let Ok(entries) = std::fs::read_dir(root.join("boot")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("initrd.img") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for name in ["initrd.img", "initrd.img.old", "vmlinuz.old"] {
        let _ = std::fs::remove_file(root.join(name));
    }
    // An empty machine-id on a read-only root: systemd uses a transient one per boot.
    write(root, "etc/machine-id", "")?;
    // Writable state lives in memory (the data partition will hold the workload).
    write(
        root,
        "etc/fstab",
        "tmpfs /var tmpfs mode=0755,nosuid,nodev 0 0\ntmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n",
    )?;
    for unit in MASKED_UNITS {
        link(root, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    write(
        root,
        "etc/systemd/network/80-dhcp.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    link(
        root,
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/usr/lib/systemd/system/systemd-networkd.service",
    )?;
    // Podman's Docker-compatible API socket, when Podman is installed (the agent's engine).
    if root.join("usr/lib/systemd/system/podman.socket").is_file() {
        link(
            root,
            "etc/systemd/system/sockets.target.wants/podman.socket",
            "/usr/lib/systemd/system/podman.socket",
        )?;
    }
    // Mount point of the data partition (cvm-data@.service opens and mounts it for the agent).
    std::fs::create_dir_all(root.join("data")).ctx("creating directory", root.join("data"))?;
    // Logs and caches that record the build host or time.
    for rel in [
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/alternatives.log",
        "var/cache/ldconfig/aux-cache",
    ] {
        let _ = std::fs::remove_file(root.join(rel));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customize_prepares_a_read_only_measured_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/initrd.img-6.12"), b"x").unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.12"), b"k").unwrap();
        std::fs::write(root.join("etc-placeholder"), b"").unwrap();
        customize(root).unwrap();
        assert!(!root.join("boot/initrd.img-6.12").exists());
        assert!(root.join("boot/vmlinuz-6.12").exists(), "the kernel stays");
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
        assert!(
            root.join("data").is_dir(),
            "the data partition's mount point"
        );
        let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
        assert!(fstab.contains("tmpfs /var tmpfs"));
        for unit in MASKED_UNITS {
            let link = std::fs::read_link(root.join("etc/systemd/system").join(unit)).unwrap();
            assert_eq!(link, Path::new("/dev/null"), "{unit} must be masked");
        }
        // Idempotent: a second run replaces its own links.
        customize(root).unwrap();
    }
}

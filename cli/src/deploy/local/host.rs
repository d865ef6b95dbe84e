//! What deploy-local needs of this host: the accelerator, SEV-SNP, the programs and firmware it
//! runs, free loopback ports, and a state directory whose paths swtpm can take.

use crate::deploy::token;
use anyhow::{bail, Context, Result};
use image_builder::boot::SnpLaunch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why this host cannot launch SEV-SNP guests, or the host's C-bit position and reduced
/// physical address bits when it can.
pub fn snp_host(accel: &str) -> std::result::Result<(u32, u32), String> {
    let enabled = std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .map(|value| matches!(value.trim(), "Y" | "1"))
        .unwrap_or(false);
    if !enabled {
        return Err("kvm_amd has no SEV-SNP (sev_snp parameter absent or off)".into());
    }
    if !Path::new("/dev/sev").exists() {
        return Err("/dev/sev missing".into());
    }
    if accel != "kvm" {
        return Err("SEV-SNP needs KVM".into());
    }
    let version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    if !qemu_supports_snp(&version) {
        return Err(format!(
            "QEMU 9.1 or later needed for SEV-SNP guests ({})",
            version.lines().next().unwrap_or("no qemu-system-x86_64")
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0x8000001F (AMD memory encryption) exists on every SEV host.
        let leaf = std::arch::x86_64::__cpuid(0x8000_001f);
        Ok((leaf.ebx & 0x3f, (leaf.ebx >> 6) & 0x3f))
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err("not an x86_64 host".into())
}

/// `QEMU emulator version X.Y.Z ...` with X.Y >= 9.1.
fn qemu_supports_snp(version_output: &str) -> bool {
    let version = version_output
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .unwrap_or_default();
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (9, 1)
}

/// KVM only where it can run a guest: /dev/kvm must open and the CPU must expose VMX or SVM
/// (inside a VM without nested virtualization /dev/kvm may exist while guests cannot run).
pub fn accel(requested: &str) -> String {
    match requested {
        "auto" => {
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let extensions = cpuinfo
                .lines()
                .filter(|line| line.starts_with("flags"))
                .any(|line| {
                    line.split_whitespace()
                        .any(|flag| flag == "vmx" || flag == "svm")
                });
            if device && extensions { "kvm" } else { "tcg" }.into()
        }
        other => other.into(),
    }
}

/// Where a local VM keeps its TPM state, AK, token, serial log and process IDs:
/// `$XDG_STATE_HOME/cvm-cli/local/<name>`, like every deployment's state directory.
pub fn state_dir(name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("VM name {name:?}: use letters, digits, '-' and '_'");
    }
    without_commas(token::state_dir("local", name)?)
}

/// Refuses a state directory holding a comma: its paths become swtpm option values (`dir=...`,
/// `path=...`), which swtpm splits at commas with no way to escape them, so a comma in
/// XDG_STATE_HOME or HOME would inject swtpm options.
fn without_commas(dir: PathBuf) -> Result<PathBuf> {
    if dir.to_string_lossy().contains(',') {
        bail!(
            "state directory {} contains ',', which swtpm cannot take in an option value: set \
             XDG_STATE_HOME to a directory without commas",
            dir.display()
        );
    }
    Ok(dir)
}

/// The programs and firmware files a launch needs, each named with what provides it.
pub fn check_tools(snp: Option<&SnpLaunch>) -> Result<()> {
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
    ] {
        if !on_path(program) {
            bail!("{program} is not installed (not on PATH): install the {package} package");
        }
    }
    let files: Vec<(PathBuf, &str)> = match snp {
        Some(launch) => vec![
            (launch.ovmf.clone(), "--snp-ovmf: an AmdSevX64 OVMF build"),
            (launch.uki.clone(), "--uki: the image's UKI"),
        ],
        None => vec![
            (image_builder::boot::OVMF_CODE.into(), "the ovmf package"),
            (image_builder::boot::OVMF_VARS.into(), "the ovmf package"),
        ],
    };
    for (file, from) in files {
        if !file.is_file() {
            bail!("firmware file {} is missing ({from})", file.display());
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Host ports given twice (QEMU would fail to bind the second forward).
pub fn check_distinct(ports: &[u16]) -> Result<()> {
    for (n, port) in ports.iter().enumerate() {
        if ports[..n].contains(port) {
            bail!("host port {port} is given twice (--port and --forward take distinct ports)");
        }
    }
    Ok(())
}

/// Each host port can be bound on 127.0.0.1 now (QEMU forwards from there).
pub fn check_ports_free(ports: &[u16]) -> Result<()> {
    for &port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("port {port} on 127.0.0.1 is taken: pick another --port or --forward")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_with_commas_are_refused() {
        let err = without_commas("/tmp/x,file=/etc/cvm-cli/local/vm".into()).unwrap_err();
        assert!(err.to_string().contains("','"), "{err}");
        assert!(without_commas("/tmp/x/cvm-cli/local/vm".into()).is_ok());
        assert!(state_dir("a/b").is_err());
    }

    #[test]
    fn ports_are_distinct_and_free() {
        check_distinct(&[18000, 18080]).unwrap();
        assert!(check_distinct(&[18000, 18000]).is_err());
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let said = check_ports_free(&[port]).unwrap_err().to_string();
        assert!(said.contains(&format!("port {port}")), "{said}");
        drop(taken);
        check_ports_free(&[port]).unwrap();
    }

    #[test]
    fn snp_needs_qemu_9_1() {
        assert!(qemu_supports_snp("QEMU emulator version 9.1.0 (Debian)"));
        assert!(qemu_supports_snp(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2)"
        ));
        assert!(!qemu_supports_snp(
            "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7)"
        ));
        assert!(!qemu_supports_snp("QEMU emulator version 9.0.2"));
        assert!(!qemu_supports_snp(""));
    }
}

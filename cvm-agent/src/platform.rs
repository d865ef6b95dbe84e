//! Which cloud and TEE the agent runs on: configuration first, then what the machine shows.

use cvm_attestation::evidence::{Cloud, Platform, Tee};
use serde::Serialize;
use std::path::Path;

/// Where the kernel shows the firmware's DMI (SMBIOS) identification.
pub const DMI_DIR: &str = "/sys/class/dmi/id";

/// Detects the platform, honouring explicit configuration.
pub fn detect(cloud: Option<Cloud>, tee: Option<Tee>) -> Platform {
    let cloud = cloud.unwrap_or_else(|| cloud_from_dmi(Path::new(DMI_DIR)));
    let tee = tee.unwrap_or_else(|| {
        if Path::new("/dev/sev-guest").exists()
            || cloud == Cloud::Azure && Path::new("/dev/tpmrm0").exists()
        {
            // Azure SNP guests run above a paravisor and reach SNP through the vTPM's HCL report.
            Tee::SevSnp
        } else if Path::new("/dev/tdx_guest").exists() {
            Tee::Tdx
        } else {
            Tee::None
        }
    });
    Platform { cloud, tee }
}

/// The cloud the DMI directory `dmi_dir` (normally [`DMI_DIR`]) names by its `sys_vendor`; an
/// unreadable or unknown vendor is QEMU.
pub fn cloud_from_dmi(dmi_dir: &Path) -> Cloud {
    let vendor = std::fs::read_to_string(dmi_dir.join("sys_vendor")).unwrap_or_default();
    cloud_from_vendor(vendor.trim())
}

/// The cloud a DMI `sys_vendor` names; anything unknown is QEMU.
pub fn cloud_from_vendor(vendor: &str) -> Cloud {
    match vendor {
        "Microsoft Corporation" => Cloud::Azure,
        "Google" => Cloud::Gcp,
        "Amazon EC2" => Cloud::Aws,
        _ => Cloud::Qemu,
    }
}

/// The predecessor's `/platform` answer.
#[derive(Debug, Serialize)]
pub struct PlatformInfo {
    pub tee_type: Tee,
    pub tee_name: &'static str,
    pub cloud_type: Cloud,
    pub cloud_name: &'static str,
}

impl From<Platform> for PlatformInfo {
    fn from(platform: Platform) -> Self {
        Self {
            tee_type: platform.tee,
            tee_name: match platform.tee {
                Tee::SevSnp => "AMD SEV-SNP",
                Tee::Tdx => "Intel TDX",
                Tee::None => "none",
            },
            cloud_type: platform.cloud,
            cloud_name: match platform.cloud {
                Cloud::Azure => "Microsoft Azure",
                Cloud::Gcp => "Google Cloud",
                Cloud::Aws => "Amazon Web Services",
                Cloud::Qemu => "QEMU (local)",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_wins_and_vendors_map() {
        let p = detect(Some(Cloud::Gcp), Some(Tee::Tdx));
        assert_eq!((p.cloud, p.tee), (Cloud::Gcp, Tee::Tdx));
        assert_eq!(cloud_from_vendor("Amazon EC2"), Cloud::Aws);
        assert_eq!(cloud_from_vendor("QEMU"), Cloud::Qemu);
        let dmi = tempfile::tempdir().unwrap();
        assert_eq!(cloud_from_dmi(dmi.path()), Cloud::Qemu, "no sys_vendor");
        std::fs::write(dmi.path().join("sys_vendor"), "Microsoft Corporation\n").unwrap();
        assert_eq!(cloud_from_dmi(dmi.path()), Cloud::Azure);
    }
}

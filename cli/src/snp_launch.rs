//! The expected SEV-SNP launch digest of a QEMU guest, computed offline from the firmware (OVMF
//! with SEV metadata) and, for a direct boot with `kernel-hashes=on`, the UKI, initrd and command
//! line whose hashes QEMU places in the firmware's hash table. This is the measurement the AMD
//! Secure Processor signs in every report of the guest, so it goes into the golden values.
//!
//! The digest is computed with the `sev` crate's measurement module (the same page-by-page
//! SNP_LAUNCH_UPDATE model as `sev-snp-measure`, which tests cross-check it against).

use anyhow::{Context, Result};
use clap::Args;
use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use std::path::PathBuf;

/// What the launch digest depends on.
#[derive(Debug, Clone, Args)]
pub struct LaunchInputs {
    /// OVMF built with SEV-SNP metadata (one combined image, given to QEMU with `-bios`).
    #[arg(long = "snp-ovmf", value_name = "OVMF.fd")]
    pub ovmf: PathBuf,
    /// The kernel, here the UKI, for a direct boot with QEMU's `kernel-hashes=on`.
    #[arg(long = "snp-kernel", value_name = "UKI")]
    pub kernel: Option<PathBuf>,
    /// The initrd of a direct boot (none for a UKI, which carries its own).
    #[arg(long = "snp-initrd", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line of a direct boot (none for a UKI).
    #[arg(long = "snp-append", requires = "kernel")]
    pub append: Option<String>,
    /// Number of vCPUs (one VMSA each).
    #[arg(long = "snp-vcpus", default_value_t = 1)]
    pub vcpus: u32,
    /// QEMU's `-cpu` model (EPYC-v4, EPYC-Milan, EPYC-Genoa, ...): it fixes the CPUID signature
    /// in each VMSA.
    #[arg(long = "snp-vcpu-type", default_value = "EPYC-v4")]
    pub vcpu_type: String,
    /// SEV_FEATURES of the guest (bit 0: SNP active).
    #[arg(long = "snp-guest-features", default_value = "0x1", value_parser = parse_u64)]
    pub guest_features: u64,
}

fn parse_u64(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|error| format!("{text:?}: {error}"))
}

/// Firmware images are whole 4 KiB pages, at least the 64 KiB OVMF's reset vector and metadata
/// need, and at most 64 MiB (the largest OVMF build is 4 MiB).
fn check_firmware_size(path: &std::path::Path) -> Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("firmware {}", path.display()))?
        .len();
    anyhow::ensure!(
        (64 << 10..=64 << 20).contains(&size) && size % 4096 == 0,
        "firmware {} is {size} bytes: not an OVMF image (whole 4 KiB pages, 64 KiB to 64 MiB)",
        path.display()
    );
    Ok(())
}

/// `cvm-cli snp-launch-digest`: prints the digest (hex) for scripts and golden files.
pub fn run(inputs: LaunchInputs) -> Result<()> {
    let digest = hex::encode(launch_digest(&inputs)?);
    if crate::output::json() {
        return crate::output::print_json(&serde_json::json!({ "launch_digest": digest }));
    }
    println!("{digest}");
    Ok(())
}

/// The 48-byte launch digest.
pub fn launch_digest(inputs: &LaunchInputs) -> Result<[u8; 48]> {
    let vcpu_type = CpuType::try_from(inputs.vcpu_type.as_str())
        .map_err(|error| anyhow::anyhow!("vCPU type {:?}: {error}", inputs.vcpu_type))?;
    anyhow::ensure!(
        (1..=512).contains(&inputs.vcpus),
        "vCPU count {} out of range 1..=512",
        inputs.vcpus
    );
    check_firmware_size(&inputs.ovmf)?;
    let args = SnpMeasurementArgs {
        vcpus: inputs.vcpus,
        vcpu_type,
        ovmf_file: inputs.ovmf.clone(),
        guest_features: GuestFeatures(inputs.guest_features),
        kernel_file: inputs.kernel.clone(),
        initrd_file: inputs.initrd.clone(),
        append: inputs.append.as_deref(),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::QEMU),
    };
    // The firmware's metadata tables are parsed by `sev`, which can panic on malformed input (an
    // overflow on short files, seen here): the size check above rules out the known case, and a
    // panic on anything else becomes an error naming the file.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| snp_calc_launch_digest(args));
    std::panic::set_hook(previous_hook);
    let digest = result
        .map_err(|_| anyhow::anyhow!("malformed firmware metadata"))?
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| {
            format!(
                "computing the SEV-SNP launch digest of {} (is it an OVMF with SEV metadata?)",
                inputs.ovmf.display()
            )
        })?;
    let bytes: Vec<u8> = digest
        .try_into()
        .map_err(|error| anyhow::anyhow!("launch digest: {error:?}"))?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| anyhow::anyhow!("launch digest is {} bytes", bytes.len()))
}

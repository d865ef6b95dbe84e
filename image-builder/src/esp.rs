//! The EFI system partition: a FAT image made by `mkfs.vfat --invariant` (no random volume ID,
//! no build time) holding the UKI as `EFI/BOOT/BOOTX64.EFI` (the removable-media path firmware
//! boots without any boot variables), filled in with mtools, which honours `SOURCE_DATE_EPOCH`.

use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::{invalid, Result};

/// Writes a FAT ESP of `size_mib` MiB with `uki` at `EFI/BOOT/BOOTX64.EFI`.
pub fn build(out: &Path, uki: &Path, size_mib: u64, volume_id: u32, epoch: u64) -> Result<()> {
    if !(2..=4096).contains(&size_mib) {
        return Err(invalid(format!("ESP size {size_mib} MiB out of range")));
    }
    let _ = std::fs::remove_file(out);
    cmd::run(
        Command::new("mkfs.vfat")
            .arg("--invariant")
            .arg("-i")
            .arg(format!("{volume_id:08x}"))
            .arg("-n")
            .arg("ESP")
            .arg("-C")
            .arg(out)
            .arg((size_mib * 1024).to_string()),
    )?;
    let mtools = |args: &[&std::ffi::OsStr]| {
        cmd::run(
            Command::new(args[0])
                .args(&args[1..])
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .env("MTOOLS_SKIP_CHECK", "1"),
        )
    };
    let img = out.as_os_str();
    mtools(&[
        "mmd".as_ref(),
        "-i".as_ref(),
        img,
        "::EFI".as_ref(),
        "::EFI/BOOT".as_ref(),
    ])?;
    mtools(&[
        "mcopy".as_ref(),
        "-i".as_ref(),
        img,
        uki.as_os_str(),
        "::EFI/BOOT/BOOTX64.EFI".as_ref(),
    ])?;
    Ok(())
}

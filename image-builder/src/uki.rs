//! The Unified Kernel Image: Debian's systemd EFI stub with `.osrel`, `.cmdline`, `.uname`,
//! `.initrd` and `.linux` appended (the stub brings its own `.sbat`). Written by [`crate::pe`]
//! instead of `objcopy`, which stamps the build time into the header and so changes the
//! Authenticode hash (and PCR 4) on every build.

use crate::error::{invalid, Result};
use crate::pe;

/// Inputs of a UKI.
pub struct UkiParts<'a> {
    pub stub: &'a [u8],
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
    pub osrel: &'a str,
    pub uname: &'a str,
}

/// Sections in the order we append them (small ones first, the kernel last).
pub fn sections<'a>(p: &'a UkiParts<'a>) -> Vec<(&'static str, &'a [u8])> {
    vec![
        (".osrel", p.osrel.as_bytes()),
        (".cmdline", p.cmdline.as_bytes()),
        (".uname", p.uname.as_bytes()),
        (".initrd", p.initrd),
        (".linux", p.linux),
    ]
}

/// Builds the UKI bytes.
pub fn build(p: &UkiParts) -> Result<Vec<u8>> {
    if p.cmdline.contains('\0') || p.cmdline.contains('\n') {
        return Err(invalid("kernel command line must be one line without NUL"));
    }
    pe::Pe::parse(p.linux)
        .map_err(|e| invalid(format!("kernel is not an EFI-stub PE image: {e}")))?;
    pe::add_sections(p.stub, &sections(p))
}

/// The stub's self-description, e.g. `systemd-stub 252.39-1~deb12u2`, from its `LoaderInfo`
/// marker.
pub fn stub_version(stub: &[u8]) -> Option<String> {
    let marker = b"#### LoaderInfo: ";
    let at = stub.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let rest = &stub[at..stub.len().min(at + 128)];
    let end = rest.windows(5).position(|w| w == b" ####")?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Signs `unsigned` into `signed` with `sbsign` (Authenticode PKCS#7). `sbsign` pads the image to
/// 8 bytes before the signature: the padding is part of the Authenticode hash, so measurements
/// are predicted from the signed file. The signature carries a signing time, so signed UKIs (and
/// the ESP and disk holding them) differ in those bytes between builds; the Authenticode digest,
/// and with it every predicted PCR, does not.
pub fn sign(
    unsigned: &std::path::Path,
    signed: &std::path::Path,
    sb: &crate::config::SecureBoot,
) -> Result<()> {
    crate::cmd::run(
        std::process::Command::new("sbsign")
            .arg("--key")
            .arg(&sb.key)
            .arg("--cert")
            .arg(&sb.cert)
            .arg("--output")
            .arg(signed)
            .arg(unsigned),
    )?;
    Ok(())
}

//! `image.toml`: what to build. Relative paths are relative to the config file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{invalid, IoContext, Result};

/// Base OS of the root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// busybox-static, for fast tests.
    #[default]
    Tiny,
    /// A Debian root with systemd (not implemented yet).
    Debian,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => Ok(Profile::Tiny),
            "debian" => Ok(Profile::Debian),
            _ => Err(format!("unknown profile {s} (tiny|debian)")),
        }
    }
}

/// Output formats besides the ESP and partition images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `disk.raw` (always written; the others are made from it).
    Raw,
    /// Azure fixed VHD `disk.vhd`.
    Vhd,
    /// GCP `disk.tar.gz`.
    Gcp,
    /// AWS stream-optimized `disk.vmdk`.
    Vmdk,
}

fn d_name() -> String {
    "cvm".into()
}
fn d_cmdline() -> String {
    "console=ttyS0 panic=-1".into()
}
fn d_kernel() -> String {
    "linux-image-cloud-amd64".into()
}
fn d_stub() -> String {
    "systemd-boot-efi".into()
}
fn d_modules() -> Vec<String> {
    [
        "crc32c_generic",
        "virtio_pci",
        "virtio_blk",
        "libcrc32c",
        "erofs",
        "dm_verity",
    ]
    .map(String::from)
    .to_vec()
}
fn d_esp() -> u64 {
    0
}
fn d_data() -> u64 {
    16
}
fn d_formats() -> Vec<Format> {
    vec![Format::Raw, Format::Vhd, Format::Gcp, Format::Vmdk]
}
fn d_suite() -> String {
    "trixie".into()
}
fn d_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn d_packages() -> Vec<String> {
    [
        "systemd",
        "systemd-sysv",
        "udev",
        "dbus",
        "linux-image-cloud-amd64",
        "systemd-boot-efi",
        "podman",
        "docker-compose",
        "iproute2",
        "ca-certificates",
        "e2fsprogs",
        "kmod",
    ]
    .map(String::from)
    .to_vec()
}
fn d_busybox() -> PathBuf {
    "/bin/busybox".into()
}
fn d_veritysetup() -> PathBuf {
    "/usr/sbin/veritysetup".into()
}
fn d_verity() -> bool {
    true
}

/// Secure Boot signing of the UKI with the user's db key (`sbsign`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBoot {
    /// PEM private key of a certificate enrolled in the VM's `db`.
    pub key: PathBuf,
    /// PEM certificate matching `key`.
    pub cert: PathBuf,
}

/// The build configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_name")]
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub profile: Profile,
    /// Timestamp for every file; `SOURCE_DATE_EPOCH` in the environment wins.
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
    /// Kernel command line; `roothash=<hex>` is appended by the build.
    #[serde(default = "d_cmdline")]
    pub cmdline: String,
    /// Debian package with the kernel (a metapackage is followed to its image package).
    #[serde(default = "d_kernel")]
    pub kernel_package: String,
    /// A local kernel `.deb` instead of `kernel_package` (pinning, offline builds).
    #[serde(default)]
    pub kernel_deb: Option<PathBuf>,
    /// A directory holding `boot/vmlinuz-<version>` and `{usr/,}lib/modules/<version>` (an unpacked
    /// kernel package or a root tree), used instead of `kernel_deb`/`kernel_package`.
    #[serde(default)]
    pub kernel_tree: Option<PathBuf>,
    #[serde(default = "d_stub")]
    pub stub_package: String,
    #[serde(default)]
    pub stub_deb: Option<PathBuf>,
    /// A `linuxx64.efi.stub` file used as is (wins over `stub_deb`/`stub_package`).
    #[serde(default)]
    pub stub_path: Option<PathBuf>,
    /// Trees copied over the base root, in order.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// The agent binary, installed as `/usr/bin/cvm-agent` with its shared libraries.
    #[serde(default)]
    pub agent: Option<PathBuf>,
    /// The repository's `initrd/` directory.
    pub initrd_dir: PathBuf,
    /// Modules the initrd loads (dependencies are added, built-ins skipped).
    #[serde(default = "d_modules")]
    pub initrd_modules: Vec<String>,
    /// ESP size in MiB (0: fit the UKI).
    #[serde(default = "d_esp")]
    pub esp_size_mib: u64,
    /// Data partition size in MiB.
    #[serde(default = "d_data")]
    pub data_size_mib: u64,
    #[serde(default = "d_formats")]
    pub formats: Vec<Format>,
    /// erofs compression (`lz4`, `lz4hc`, `lz4hc,12`); none by default.
    #[serde(default)]
    pub erofs_compression: Option<String>,
    /// `debian` profile: the Debian suite (kernel and stub come from the same release).
    #[serde(default = "d_suite")]
    pub suite: String,
    /// `debian` profile: the mirror mmdebstrap installs from.
    #[serde(default = "d_mirror")]
    pub mirror: String,
    /// `debian` profile: packages installed on top of `minbase`.
    #[serde(default = "d_packages")]
    pub packages: Vec<String>,
    /// Sign the UKI for Secure Boot; PCR 4 is then predicted for Secure Boot on.
    #[serde(default)]
    pub secure_boot: Option<SecureBoot>,
    #[serde(default = "d_busybox")]
    pub busybox: PathBuf,
    #[serde(default = "d_veritysetup")]
    pub veritysetup: PathBuf,
    /// dm-verity on the root (default `true`). `verity = false` is a benchmark and diagnosis
    /// switch only (e.g. to measure what dm-verity costs at boot), never for a deployed image:
    /// the build still writes the verity partition the same way (the disk layout is identical and
    /// the partitions are still found by the root hash), but appends ` cvm.verity=off` to the
    /// command line after `roothash=`, and the initrd then mounts the root partition directly,
    /// without any integrity check. The command line is a section of the UKI and thus measured
    /// (into PCR 11 with the UKI's sections, and into PCR 4 with the UKI's Authenticode hash), so
    /// the predicted PCR 4 and 11 differ from those of the verity image: a verifier holding the
    /// verity image's golden values can never mistake such an image for it.
    #[serde(default = "d_verity")]
    pub verity: bool,
}

impl Config {
    /// Reads and checks `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).ctx("reading config", path)?;
        let mut c: Config =
            basic_toml::from_str(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        c.overlays.iter_mut().for_each(fix);
        fix(&mut c.initrd_dir);
        if let Some(p) = c.agent.as_mut() {
            fix(p)
        }
        if let Some(p) = c.kernel_deb.as_mut() {
            fix(p)
        }
        if let Some(p) = c.stub_deb.as_mut() {
            fix(p)
        }
        if let Some(p) = c.stub_path.as_mut() {
            fix(p)
        }
        if let Some(p) = c.kernel_tree.as_mut() {
            fix(p)
        }
        if let Some(sb) = c.secure_boot.as_mut() {
            fix(&mut sb.key);
            fix(&mut sb.cert);
        }
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(format!(
                "image name {:?} must be [A-Za-z0-9._-]+",
                self.name
            )));
        }
        if self.cmdline.contains("roothash=") {
            return Err(invalid(
                "cmdline must not set roothash= (the build appends it)",
            ));
        }
        if self.cmdline.contains("cvm.verity=") {
            return Err(invalid(
                "cmdline must not set cvm.verity= (use `verity = false`, which appends it)",
            ));
        }
        if self.cmdline.contains(['\n', '\0']) {
            return Err(invalid("cmdline must be one line"));
        }
        let word = |w: &str| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
        };
        if !word(&self.suite) || !self.packages.iter().all(|p| word(p)) {
            return Err(invalid("suite and packages must be Debian names"));
        }
        if !(self.mirror.starts_with("http://")
            || self.mirror.starts_with("https://")
            || self.mirror.starts_with("file:/"))
        {
            return Err(invalid(format!(
                "mirror {} is not an http(s) or file URL",
                self.mirror
            )));
        }
        if self.data_size_mib == 0 || self.data_size_mib > 1 << 20 {
            return Err(invalid("data_size_mib must be in 1..=1048576"));
        }
        Ok(())
    }

    /// The effective `SOURCE_DATE_EPOCH`.
    pub fn epoch(&self) -> Result<u64> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(format!("SOURCE_DATE_EPOCH={v} is not a number"))),
            Err(_) => Ok(self.source_date_epoch.unwrap_or(1_704_067_200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("image.toml");
        std::fs::write(
            &p,
            "name = \"x\"\ninitrd_dir = \"initrd\"\nformats = [\"raw\", \"vhd\"]\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.initrd_dir, dir.path().join("initrd"));
        assert_eq!(c.formats, vec![Format::Raw, Format::Vhd]);
        std::fs::write(&p, "initrd_dir = \"i\"\nbogus = 1\n").unwrap();
        assert!(Config::load(&p).is_err());
        std::fs::write(&p, "initrd_dir = \"i\"\ncmdline = \"roothash=00\"\n").unwrap();
        assert!(Config::load(&p).is_err());
        std::fs::write(&p, "initrd_dir = \"i\"\ncmdline = \"cvm.verity=off\"\n").unwrap();
        assert!(Config::load(&p).is_err());
        std::fs::write(&p, "initrd_dir = \"i\"\n").unwrap();
        assert!(Config::load(&p).unwrap().verity, "verity is on by default");
        std::fs::write(&p, "initrd_dir = \"i\"\nverity = false\n").unwrap();
        assert!(!Config::load(&p).unwrap().verity);
    }
}

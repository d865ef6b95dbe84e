//! Cloud deploys: every command prints its plan first (`--dry-run` stops there), uploads the disk
//! in parallel skipping zero blocks, tags everything it creates with the deployment's name so
//! `cleanup` removes exactly that, undoes what it created when a later step fails, and ends with
//! the VM's address and the command that verifies it.

pub mod aws;
pub mod azure;
pub mod blocks;
pub mod gcp;
pub mod list;
pub mod local;
pub mod net;
pub mod plan;
pub mod runner;
pub mod token;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// The tag (label on GCP) on every resource a deploy creates; its value is the deployment name.
pub const DEPLOYMENT_TAG: &str = "cvm-cli-deployment";

/// The agent's external port: always opened.
pub const AGENT_PORT: u16 = 8000;

/// Options every cloud deploy shares.
#[derive(Debug, Clone, Args)]
pub struct DeployOptions {
    /// Disk image to deploy (disk.raw from `cvm-image build`). Default: the newest
    /// `out/*/disk.raw`.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Extra inbound TCP ports besides the agent's 8000, e.g. "80,443".
    #[arg(
        long,
        alias = "additional_ports",
        value_delimiter = ',',
        value_name = "PORTS"
    )]
    pub additional_ports: Vec<u16>,
    /// Who may connect to the agent's 8000 and the extra ports: an IPv4 or IPv6 range in CIDR
    /// notation (e.g. 203.0.113.7/32), repeatable. Required: the world only as an explicit
    /// `--allow-from 0.0.0.0/0` (and `::/0`).
    #[arg(long, alias = "allow_from", value_name = "CIDR")]
    pub allow_from: Vec<String>,
    /// Print the plan and stop: nothing is created.
    #[arg(long, alias = "dry_run")]
    pub dry_run: bool,
    /// Parallel uploads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Keep what was created when a step fails (default: delete it again, saying so).
    #[arg(long, alias = "keep_on_failure")]
    pub keep_on_failure: bool,
    /// How long to wait for each long-running cloud operation (the VM's address included).
    #[arg(long, alias = "timeout", alias = "wait_seconds", default_value_t = 600)]
    pub wait_seconds: u64,
    /// Attestation gate: once the VM has its address, wait for its agent and verify it against
    /// these golden values (`cvm-cli golden`); the deploy fails unless every check passes (the
    /// VM is then kept for inspection, and the cleanup command printed).
    #[arg(long, value_name = "GOLDEN.json")]
    pub golden: Option<PathBuf>,
    /// How long the attestation gate waits for the agent to answer.
    #[arg(
        long,
        alias = "gate_seconds",
        default_value_t = 900,
        requires = "golden"
    )]
    pub gate_seconds: u64,
}

impl Default for DeployOptions {
    /// What `cleanup` and `list` use: the flags' defaults.
    fn default() -> Self {
        Self {
            image: None,
            additional_ports: Vec::new(),
            allow_from: Vec::new(),
            dry_run: false,
            parallel: 16,
            keep_on_failure: false,
            wait_seconds: 600,
            golden: None,
            gate_seconds: 900,
        }
    }
}

/// `--secure-boot` of the clouds that can turn UEFI Secure Boot on for our image (Azure, GCP).
#[derive(Debug, Clone, Copy, Args)]
pub struct SecureBootOption {
    /// Turn UEFI Secure Boot on. Only for an image whose UKI is signed with a key the platform
    /// trusts (see docs/deploy.md): the default image is unsigned and would not boot. Off by
    /// default: PCR 7 records the Secure Boot state either way, and the golden's PCR set decides
    /// whether it matters. vTPM and measured boot are on in both cases.
    #[arg(long, alias = "secure_boot")]
    pub secure_boot: bool,
}

impl SecureBootOption {
    /// What the plan says about Secure Boot.
    pub fn plan(self) -> plan::SecureBootPlan {
        if self.secure_boot {
            plan::SecureBootPlan {
                enabled: true,
                note: "on (--secure-boot: the UKI must be signed with a key in the platform's \
                       db, or the VM will not boot; PCR 7 records it)"
                    .into(),
            }
        } else {
            plan::SecureBootPlan::off()
        }
    }
}

/// The attestation gate (see `DeployOptions::golden`).
pub fn attestation_gate(
    address: &str,
    golden: &Path,
    limit: std::time::Duration,
    json: bool,
    cleanup: &str,
) -> Result<()> {
    let host = format!("{address}:{AGENT_PORT}");
    step(format!(
        "attestation gate: waiting for the agent at https://{host} (up to {} s)",
        limit.as_secs()
    ));
    let url = format!("https://{host}/health");
    if !crate::http::wait_for_ok(&url, limit, |_| Ok(()))? {
        bail!(
            "attestation gate: the agent at {host} did not answer within {} s; the VM is \
             kept (remove it with: {cleanup})",
            limit.as_secs()
        );
    }
    let output = match json {
        true => crate::verify::ReportOutput::Json,
        false => crate::verify::ReportOutput::Text,
    };
    let verdict = crate::verify::verify_host(&host, golden, None, output)?;
    if !verdict.verified {
        bail!(
            "attestation gate: the VM does not verify against {}; it is kept for inspection \
             (remove it with: {cleanup})",
            golden.display()
        );
    }
    step("attestation gate: the VM verified against the golden values");
    Ok(())
}

/// What a deploy lets in: TCP ports, from the `--allow-from` ranges only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    /// The agent's port first, then the extra ones as given.
    pub ports: Vec<u16>,
    /// The ranges, canonical, in the order given.
    pub sources: Vec<Cidr>,
}

/// One checked `--allow-from` range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub text: String,
    pub ipv6: bool,
}

impl Ingress {
    /// Every range, as given.
    pub fn all(&self) -> Vec<String> {
        self.sources.iter().map(|cidr| cidr.text.clone()).collect()
    }

    /// The IPv4 ranges, then the IPv6 ones (for clouds whose rules take one family each).
    pub fn by_family(&self) -> [(bool, Vec<String>); 2] {
        [false, true].map(|ipv6| {
            let ranges = self
                .sources
                .iter()
                .filter(|cidr| cidr.ipv6 == ipv6)
                .map(|cidr| cidr.text.clone())
                .collect();
            (ipv6, ranges)
        })
    }

    /// "8000, 443".
    pub fn port_list(&self) -> String {
        self.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// "inbound TCP 8000, 443 from 198.51.100.0/24".
    pub fn describe(&self) -> String {
        format!(
            "inbound TCP {} from {}",
            self.port_list(),
            self.all().join(", ")
        )
    }

    /// What the plan warns about: ranges open to everyone; with `ipv4_only_vm`, IPv6 ranges
    /// that can match nothing.
    pub fn warnings(&self, ipv4_only_vm: bool) -> Vec<String> {
        let mut warnings = Vec::new();
        let open: Vec<&str> = self
            .sources
            .iter()
            .filter(|cidr| cidr.text.ends_with("/0"))
            .map(|cidr| cidr.text.as_str())
            .collect();
        if !open.is_empty() {
            warnings.push(format!(
                "port {AGENT_PORT} (the agent's /update-workload) and the other ports are open to \
                 the whole internet ({}): only the API token protects the workload",
                open.join(", ")
            ));
        }
        if ipv4_only_vm && self.sources.iter().any(|cidr| cidr.ipv6) {
            warnings.push(
                "the VM gets only a public IPv4 address: the IPv6 ranges admit nothing".into(),
            );
        }
        warnings
    }
}

/// Checks one `--allow-from` value: an IPv4 or IPv6 address with a prefix length, no host bits.
pub fn parse_cidr(value: &str) -> Result<Cidr> {
    let value = value.trim();
    let Some((address, prefix)) = value.split_once('/') else {
        bail!(
            "--allow-from {value}: give a range with a prefix length, e.g. {value}/32 for one \
             IPv4 address or {value}/128 for one IPv6 address"
        );
    };
    let address: std::net::IpAddr = address.parse().map_err(|_| {
        anyhow::anyhow!(
            "--allow-from {value}: {address:?} is not an IPv4 or IPv6 address (write e.g. \
             203.0.113.0/24 or 2001:db8::/32)"
        )
    })?;
    let bits: u8 = if address.is_ipv6() { 128 } else { 32 };
    let prefix: u8 = Some(prefix)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .filter(|prefix| *prefix <= bits)
        .ok_or_else(|| {
            anyhow::anyhow!("--allow-from {value}: the prefix length must be 0 to {bits}")
        })?;
    let canonical = match address {
        std::net::IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            std::net::IpAddr::V4((u32::from(v4) & mask).into())
        }
        std::net::IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            std::net::IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    if canonical != address {
        bail!(
            "--allow-from {value}: the address has host bits set; did you mean \
             {canonical}/{prefix}?"
        );
    }
    Ok(Cidr {
        text: format!("{address}/{prefix}"),
        ipv6: address.is_ipv6(),
    })
}

impl DeployOptions {
    /// The global `--json`: plan and result as JSON lines on stdout, no progress bars.
    pub fn json(&self) -> bool {
        crate::output::json()
    }

    /// The checked ingress: ports 1-65535, none twice, not the agent's own; at least one
    /// `--allow-from` range, each valid and given once. Called before anything is created.
    pub fn ingress(&self) -> Result<Ingress> {
        let mut ports = vec![AGENT_PORT];
        for &port in &self.additional_ports {
            if port == 0 {
                bail!("--additional-ports: port 0 is not a port; use 1-65535");
            }
            if port == AGENT_PORT {
                bail!(
                    "--additional-ports: {AGENT_PORT} is the agent's own port, always opened; \
                     leave it out"
                );
            }
            if ports.contains(&port) {
                bail!("--additional-ports: port {port} is given twice");
            }
            ports.push(port);
        }
        if self.allow_from.is_empty() {
            bail!(
                "no --allow-from: say who may reach port {AGENT_PORT} (the agent's \
                 /update-workload) and the other ports. Pass --allow-from <your public IP>/32 \
                 (e.g. --allow-from $(curl -s https://checkip.amazonaws.com)/32), repeatable \
                 for more ranges; to open it to the whole internet, say so: \
                 --allow-from 0.0.0.0/0 (and --allow-from ::/0)"
            );
        }
        let mut sources: Vec<Cidr> = Vec::new();
        for value in &self.allow_from {
            let cidr = parse_cidr(value)?;
            if sources.contains(&cidr) {
                bail!("--allow-from {}: given twice", cidr.text);
            }
            sources.push(cidr);
        }
        Ok(Ingress { ports, sources })
    }

    /// The image to upload: as given, or the newest build output.
    pub fn image(&self) -> Result<PathBuf> {
        let image = match &self.image {
            Some(image) => image.clone(),
            None => newest_build_output(Path::new("out"))?,
        };
        let metadata =
            std::fs::metadata(&image).with_context(|| format!("disk image {}", image.display()))?;
        if !metadata.is_file() || metadata.len() == 0 {
            bail!("disk image {} is not a non-empty file", image.display());
        }
        Ok(image)
    }
}

/// The most recently written `out/<name>/disk.raw`.
pub fn newest_build_output(out: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(out).with_context(|| {
        format!(
            "no --image given and no build output in {}/ (run `cvm-image build` first)",
            out.display()
        )
    })?;
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("disk.raw"))
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max()
        .map(|(_, path)| path)
        .with_context(|| format!("no --image given and no {}/*/disk.raw", out.display()))
}

/// Names of cloud resources: the deployment name plus a suffix; letters, digits, '-' only.
pub fn check_deployment_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("VM name {name:?}: start with a letter; use at most 48 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// Prints a progress line on stderr (stdout stays for results and JSON); silent with `-q` and
/// `--json`.
pub fn step(what: impl std::fmt::Display) {
    crate::output::progress(format_args!("==> {what}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ports: &[u16], allow_from: &[&str]) -> DeployOptions {
        DeployOptions {
            image: None,
            additional_ports: ports.to_vec(),
            allow_from: allow_from.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            parallel: 1,
            keep_on_failure: false,
            wait_seconds: 1,
            golden: None,
            gate_seconds: 1,
        }
    }

    #[test]
    fn ingress_starts_with_the_agent_and_refuses_bad_ports() {
        let ingress = options(&[443, 80], &["198.51.100.0/24", "2001:db8::/32"])
            .ingress()
            .unwrap();
        assert_eq!(ingress.ports, vec![8000, 443, 80]);
        assert_eq!(ingress.all(), vec!["198.51.100.0/24", "2001:db8::/32"]);
        assert!(ingress.warnings(false).is_empty());
        for bad in [&[0][..], &[443, 443], &[8000]] {
            assert!(
                options(bad, &["198.51.100.0/24"]).ingress().is_err(),
                "{bad:?}"
            );
        }
        let missing = options(&[], &[]).ingress().unwrap_err().to_string();
        assert!(
            missing.contains("--allow-from <your public IP>/32"),
            "{missing}"
        );
        let open = options(&[], &["0.0.0.0/0", "::/0"]).ingress().unwrap();
        assert_eq!(open.warnings(true).len(), 2);
    }

    #[test]
    fn cidrs_are_checked() {
        for good in [
            "198.51.100.7/32",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::/32",
            "10.0.0.0/8",
        ] {
            assert_eq!(parse_cidr(good).unwrap().text, good);
        }
        assert!(parse_cidr("2001:db8::/32").unwrap().ipv6);
        for bad in [
            "198.51.100.7",
            "198.51.100.0/33",
            "198.51.100.0/",
            "198.51.100.0/+8",
            "2001:db8::/129",
            "host/24",
            "198.51.100/24",
            "198.51.100.7/24",
            "2001:db8::1/32",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(parse_cidr("198.51.100.7/24")
            .unwrap_err()
            .to_string()
            .contains("198.51.100.0/24"));
    }

    #[test]
    fn deployment_names_are_checked() {
        assert!(check_deployment_name("cvm-test").is_ok());
        assert!(check_deployment_name("cvm_test").is_ok());
        for bad in ["", "1abc", "a b", "a/b", &"x".repeat(49)] {
            assert!(check_deployment_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn newest_build_output_is_picked() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["old", "new"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("disk.raw"), b"x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            newest_build_output(dir.path()).unwrap(),
            dir.path().join("new/disk.raw")
        );
        assert!(newest_build_output(&dir.path().join("missing")).is_err());
    }
}

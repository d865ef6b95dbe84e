//! Cloud deploys: every command prints its plan first (`--dry-run` stops there), uploads the disk
//! in parallel skipping zero blocks, tags everything it creates with the deployment's name so
//! `cleanup` removes exactly that, undoes what it created when a later step fails, and ends with
//! the VM's address and the command that verifies it.

pub mod arm;
pub mod aws;
pub mod azure;
pub mod blocks;
pub mod ec2;
pub mod gce;
pub mod gcp;
pub mod gcs;
pub mod plan;
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
        visible_alias = "additional_ports",
        value_delimiter = ',',
        value_name = "PORTS"
    )]
    pub additional_ports: Vec<u16>,
    /// Print the plan and stop: nothing is created.
    #[arg(long, visible_alias = "dry_run")]
    pub dry_run: bool,
    /// Machine-readable output (plan and result as JSON on stdout, no progress bars).
    #[arg(long)]
    pub json: bool,
    /// Parallel uploads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Keep what was created when a step fails (default: delete it again, saying so).
    #[arg(long, visible_alias = "keep_on_failure")]
    pub keep_on_failure: bool,
    /// How long to wait for the VM to get its address.
    #[arg(long, default_value_t = 600)]
    pub wait_seconds: u64,
    /// Attestation gate: once the VM has its address, wait for its agent and verify it against
    /// these golden values (`cvm-cli golden`); the deploy fails unless every check passes (the
    /// VM is then kept for inspection, and the cleanup command printed).
    #[arg(long, value_name = "GOLDEN.json")]
    pub golden: Option<PathBuf>,
    /// How long the attestation gate waits for the agent to answer.
    #[arg(long, default_value_t = 900, requires = "golden")]
    pub gate_seconds: u64,
}

/// `--secure-boot` of the clouds that can turn UEFI Secure Boot on for our image (Azure, GCP).
#[derive(Debug, Clone, Copy, Args)]
pub struct SecureBootOption {
    /// Turn UEFI Secure Boot on. Only for an image whose UKI is signed with a key the platform
    /// trusts (see docs/deploy.md): the default image is unsigned and would not boot. Off by
    /// default: PCR 7 records the Secure Boot state either way, and the golden's PCR set decides
    /// whether it matters. vTPM and measured boot are on in both cases.
    #[arg(long, visible_alias = "secure_boot")]
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
    let verdict = crate::verify::verify_host(&host, golden, None, json)?;
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

impl DeployOptions {
    /// The inbound ports: the agent's, then the extra ones, without duplicates.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![AGENT_PORT];
        for port in &self.additional_ports {
            if !ports.contains(port) {
                ports.push(*port);
            }
        }
        ports
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

/// Prints a progress line on stderr (stdout stays for results and JSON).
pub fn step(what: impl std::fmt::Display) {
    eprintln!("==> {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_start_with_the_agent_and_have_no_duplicates() {
        let options = DeployOptions {
            image: None,
            additional_ports: vec![443, 8000, 80, 443],
            dry_run: false,
            json: false,
            parallel: 1,
            keep_on_failure: false,
            wait_seconds: 1,
            golden: None,
            gate_seconds: 1,
        };
        assert_eq!(options.ports(), vec![8000, 443, 80]);
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

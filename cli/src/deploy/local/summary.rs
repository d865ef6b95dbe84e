//! What deploy-local prints: its plan (before anything is started) and the VM that answered,
//! as text or, with `--json`, as `{"plan"}` and `{"deployed"}`.

use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// `127.0.0.1:HOST -> guest port GUEST`, for each `--forward`.
pub fn forwards(pairs: &[(u16, u16)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(host, guest)| format!("127.0.0.1:{host} -> guest port {guest}"))
        .collect()
}

/// What `deploy-local` will do: progress text on stderr, or `{"plan"}` on stdout with `--json`
/// (the result of a `--dry-run`).
#[derive(Debug, Serialize)]
pub struct LocalPlan {
    pub name: String,
    pub image: PathBuf,
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// SEV-SNP's firmware and directly booted UKI; none: the TPM is trusted by its recorded AK.
    pub snp: Option<SnpPlan>,
    pub tpm_state: PathBuf,
    pub agent: String,
    pub forwards: Vec<String>,
    pub data_unlock: Option<&'static str>,
    pub api_token_file: PathBuf,
    /// The steps in order, as the progress lines name them.
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SnpPlan {
    pub ovmf: PathBuf,
    pub uki: PathBuf,
}

impl LocalPlan {
    pub fn print(&self) -> Result<()> {
        use crate::output::progress;
        if crate::output::json() {
            return crate::output::print_json(&serde_json::json!({ "plan": self }));
        }
        progress(format_args!("Plan for local VM {:?}:", self.name));
        progress(format_args!(
            "  disk        {} (booted with snapshot=on: the file is never written)",
            self.image.display()
        ));
        let slow = match self.accel.as_str() {
            "tcg" => " (software emulation: about a minute to boot)",
            _ => "",
        };
        progress(format_args!(
            "  firmware    OVMF, {} MiB, {} vCPU, accel {}{slow}",
            self.memory_mib, self.cpus, self.accel
        ));
        match &self.snp {
            Some(launch) => progress(format_args!(
                "  TEE         AMD SEV-SNP: firmware {}, UKI {} booted directly (kernel-hashes=on)",
                launch.ovmf.display(),
                launch.uki.display()
            )),
            None => progress("  TEE         none (the TPM is trusted through its recorded AK)"),
        }
        progress(format_args!(
            "  TPM         swtpm, state in {}",
            self.tpm_state.display()
        ));
        progress(format_args!("  agent       {}", self.agent));
        for forward in &self.forwards {
            progress(format_args!("  forward     {forward}"));
        }
        if let Some(mode) = self.data_unlock {
            progress(format_args!(
                "  /data key   {mode} (to the guest by fw_cfg)"
            ));
        }
        progress(format_args!(
            "  API token   new random, in {} (to the guest by fw_cfg)",
            self.api_token_file.display()
        ));
        for (n, step) in self.steps.iter().enumerate() {
            progress(format_args!("  {}. {step}", n + 1));
        }
        Ok(())
    }
}

/// A local VM that answered: text on stdout, or `{"deployed"}` with `--json`.
#[derive(Debug, Serialize)]
pub struct LocalDeployed {
    pub name: String,
    pub up_after_seconds: u64,
    pub agent: String,
    pub pinned_ak: PathBuf,
    pub forwards: Vec<String>,
    pub api_token_file: PathBuf,
    pub console_log: PathBuf,
    pub verify_command: String,
    pub update_command: String,
}

impl LocalDeployed {
    pub fn print(&self) -> Result<()> {
        if crate::output::json() {
            return crate::output::print_json(&serde_json::json!({ "deployed": self }));
        }
        println!(
            "Local VM {:?} is up after {} s.",
            self.name, self.up_after_seconds
        );
        println!("  agent        {}", self.agent);
        println!("  pinned AK    {}", self.pinned_ak.display());
        for forward in &self.forwards {
            println!("  forwarded    {forward}");
        }
        println!("  API token    {}", self.api_token_file.display());
        println!("  console log  {}", self.console_log.display());
        println!("Verify it:");
        println!("  {}", self.verify_command);
        println!("Replace its workload:");
        println!("  {}", self.update_command);
        Ok(())
    }
}

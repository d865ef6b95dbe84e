//! What a deploy will do (printed before anything is created) and what it did (printed at the
//! end, or on failure so nothing half-created goes unmentioned).

use super::blocks::UploadStats;
use crate::cleanup::Report;
use serde::Serialize;
use std::path::PathBuf;

/// The plan: everything a user needs to approve a deploy.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub cloud: cvm_attestation::evidence::Cloud,
    pub deployment: String,
    pub region: String,
    pub vm_type: String,
    /// The TEE the VM type provides.
    pub tee: cvm_attestation::evidence::Tee,
    pub image: PathBuf,
    pub image_bytes: u64,
    pub ports: Vec<u16>,
    /// The only sources the ports admit (`--allow-from`).
    pub allow_from: Vec<String>,
    /// What the user should know before approving (e.g. ports open to the whole internet).
    pub warnings: Vec<String>,
    /// The agent's API token: where it is kept and how it reaches the agent.
    pub api_token: TokenPlan,
    /// UEFI Secure Boot of the VM (vTPM and measured boot are always on).
    pub secure_boot: SecureBootPlan,
    /// The steps in order, each naming the resource it creates.
    pub steps: Vec<String>,
}

/// The TEE as people name it.
pub fn tee_name(tee: cvm_attestation::evidence::Tee) -> &'static str {
    match tee {
        cvm_attestation::evidence::Tee::SevSnp => "AMD SEV-SNP",
        cvm_attestation::evidence::Tee::Tdx => "Intel TDX",
        cvm_attestation::evidence::Tee::None => "no TEE",
    }
}

/// How a deploy provisions the agent's API token.
#[derive(Debug, Serialize)]
pub struct TokenPlan {
    /// The new token's file on this machine (mode 0600).
    pub file: PathBuf,
    /// The platform field that carries the `{"cvm_api_token": ...}` document.
    pub passed_via: String,
}

/// Whether the VM boots with UEFI Secure Boot, and why.
#[derive(Debug, Serialize)]
pub struct SecureBootPlan {
    pub enabled: bool,
    pub note: String,
}

impl SecureBootPlan {
    /// Off: the default image's UKI is unsigned.
    pub fn off() -> Self {
        Self {
            enabled: false,
            note: "off (image unsigned; PCR 7 records it; the golden's PCR set decides)".into(),
        }
    }
}

impl Plan {
    /// Prints the plan: JSON on stdout with `--json`, else readable text on stderr; with `-q`
    /// only its warnings.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::json!({ "plan": self }));
            return;
        }
        crate::output::progress(format_args!(
            "Plan: deploy {} to {} {} as {} ({}, {}), inbound TCP {} from {}",
            self.image.display(),
            super::runner::cloud_dir(self.cloud),
            self.region,
            self.deployment,
            self.vm_type,
            tee_name(self.tee),
            self.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.allow_from.join(", ")
        ));
        for warning in &self.warnings {
            eprintln!("  WARNING: {warning}");
        }
        crate::output::progress(format_args!(
            "  API token: a new random one, kept in {} (mode 0600), passed to the agent via {}",
            self.api_token.file.display(),
            self.api_token.passed_via
        ));
        crate::output::progress(format_args!(
            "  Secure Boot: {}; vTPM and measured boot on",
            self.secure_boot.note
        ));
        for (n, step) in self.steps.iter().enumerate() {
            crate::output::progress(format_args!("  {}. {step}", n + 1));
        }
    }
}

/// One cloud resource this deploy created.
#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub kind: &'static str,
    pub id: String,
}

/// The result of a successful deploy.
#[derive(Debug, Serialize)]
pub struct Deployed {
    pub cloud: &'static str,
    pub deployment: String,
    pub region: String,
    pub vm_type: String,
    pub address: String,
    pub resources: Vec<Resource>,
    pub upload: UploadStats,
    /// The agent's API token (mode 0600), for `update-workload --token-file`.
    pub api_token_file: PathBuf,
    pub verify_command: String,
    pub update_command: String,
    pub cleanup_command: String,
}

impl Deployed {
    /// Prints the result, then, with `--golden`, runs the attestation gate: the deploy succeeds
    /// only when the new VM's agent answers and verifies against the golden values.
    pub fn finish(self, options: &super::DeployOptions) -> anyhow::Result<()> {
        self.print(options.json());
        let Some(golden) = options.golden.clone() else {
            return Ok(());
        };
        let (address, cleanup) = (self.address.clone(), self.cleanup_command.clone());
        let (limit, json) = (
            std::time::Duration::from_secs(options.gate_seconds),
            options.json(),
        );
        // Its own thread: the gate runs its own runtime, and this is called from async code.
        std::thread::spawn(move || {
            super::attestation_gate(&address, &golden, limit, json, &cleanup)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attestation gate failed unexpectedly"))?
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::json!({ "deployed": self }));
            return;
        }
        println!(
            "Deployed {} on {} {}: {}",
            self.deployment, self.cloud, self.region, self.address
        );
        for resource in &self.resources {
            println!("  {} {}", resource.kind, resource.id);
        }
        println!("API token:  {} (mode 0600)", self.api_token_file.display());
        println!("Verify it:  {}", self.verify_command);
        println!("Update it:  {}", self.update_command);
        println!("Remove it:  {}", self.cleanup_command);
    }
}

/// The command that attests a deployed VM (agents listen on 8000).
pub fn verify_command(address: &str) -> String {
    format!("cvm-cli verify --host {address}:8000 --golden golden.json")
}

/// The command that replaces a deployed VM's workload with the deploy's token.
pub fn update_command(address: &str, token_file: &std::path::Path) -> String {
    format!(
        "cvm-cli update-workload --host {address}:8000 --token-file {} --workload workload \
         --golden golden.json",
        token_file.display()
    )
}

/// After a failed deploy with `--keep-on-failure`: what is left, and how to remove it.
pub fn report_kept(created: &[Resource], cleanup_command: &str) {
    eprintln!("deploy failed; kept what it created (--keep-on-failure):");
    for resource in created {
        eprintln!("  kept {} {}", resource.kind, resource.id);
    }
    eprintln!("remove it with: {cleanup_command}");
}

/// `cleanup`: says what a deployment has (or would delete with `dry_run`), deletes it newest
/// first with `delete`, records each outcome in `report`, and fails when anything is left.
pub async fn delete_found<F, Fut>(
    resources: &[Resource],
    what: &str,
    dry_run: bool,
    report: &mut Report,
    mut delete: F,
) -> anyhow::Result<()>
where
    F: FnMut(Resource) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if resources.is_empty() {
        report.note(format!("nothing {what}"));
        return Ok(());
    }
    if dry_run {
        crate::output::result_line(format_args!("would delete ({what}):"));
        for resource in resources {
            let (kind, id) = (resource.kind, &resource.id);
            report.deleted(kind, id, format_args!("  {kind} {id}"));
        }
        return Ok(());
    }
    crate::output::result_line(format_args!("deleting what is {what}:"));
    for resource in resources.iter().rev() {
        let (kind, id) = (resource.kind, &resource.id);
        match delete(resource.clone()).await {
            Ok(()) => report.deleted(kind, id, format_args!("  deleted {kind} {id}")),
            Err(error) => {
                let line = format!("  could not delete {kind} {id}: {error:#}");
                report.failed(kind, id, &error, &line);
            }
        }
    }
    if !report.failed.is_empty() {
        anyhow::bail!("{} resource(s) could not be deleted", report.failed.len());
    }
    Ok(())
}

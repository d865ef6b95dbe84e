//! The one deploy runner every cloud goes through: checks, plan, preflight, steps with progress,
//! rollback, result. A cloud only says what its checks, steps and deletions are (the [`Cloud`]
//! trait); the order, the output and the undoing of a failed deploy are the same everywhere.

use super::blocks::UploadStats;
use super::plan::{report_kept, update_command, verify_command, Deployed, Plan, Resource};
use super::token::{self, DeployToken};
use super::{step, DeployOptions};
use crate::cleanup::Report;
use anyhow::{bail, Context, Result};
use cvm_attestation::evidence::Cloud as CloudKind;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Test hook: fail the deploy right after this step (1-based) succeeded, so tests can check
/// that each step's rollback deletes exactly what exists. Ignored unless set to a number.
pub const FAIL_AFTER_STEP_ENV: &str = "CVM_CLI_TEST_FAIL_AFTER_STEP";

/// One resource a deploy created, typed per cloud.
pub trait CloudResource: Clone + std::fmt::Debug {
    /// Our word for its kind ("snapshot", "VM"), as printed and in `--json`.
    fn kind(&self) -> &'static str;
    /// The cloud's id or name for it.
    fn id(&self) -> String;
    /// Whether it is the VM (which carries the API token).
    fn is_vm(&self) -> bool;

    fn record(&self) -> Resource {
        Resource {
            kind: self.kind(),
            id: self.id(),
        }
    }
}

/// What this run created, oldest first: exactly what a rollback deletes.
#[derive(Debug)]
pub struct Created<R>(Vec<R>);

impl<R: CloudResource> Created<R> {
    pub fn push(&mut self, resource: R) {
        self.0.push(resource);
    }

    /// Forgets the newest entry (a failed insert that left nothing behind).
    pub fn pop(&mut self) -> Option<R> {
        self.0.pop()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &R> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn records(&self) -> Vec<Resource> {
        self.0.iter().map(R::record).collect()
    }
}

impl<R> Default for Created<R> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// What every step may use.
pub struct StepContext {
    /// The disk image (checked to be a GPT disk).
    pub image: PathBuf,
    /// The agent's provisioning document (`{"cvm_api_token": ...}`), not yet encoded.
    pub user_data: String,
    /// The file holding the bare token (mode 0600), for a platform that hands over a file
    /// (QEMU's fw_cfg).
    pub token_file: PathBuf,
}

/// A cloud as the runner drives it. Methods that talk to the cloud are only called after
/// [`Cloud::preflight`] connected.
#[allow(async_fn_in_trait)]
pub trait Cloud {
    type Resource: CloudResource;
    /// The deploy's steps, in order; each creates what it names.
    type Step: Copy + std::fmt::Debug;

    const KIND: CloudKind;
    /// What [`Cloud::preflight`] checks, for its progress line.
    const PREFLIGHT: &'static str = "credentials, region, names already taken";

    /// The deployment's name (tag value, state directory).
    fn deployment(&self) -> &str;
    fn options(&self) -> &DeployOptions;
    /// Whether the VM will boot with UEFI Secure Boot.
    fn secure_boot(&self) -> bool {
        false
    }
    /// The disk image to deploy, checked to be a raw GPT disk (see [`check_disk_image`]).
    fn disk_image(&self) -> Result<PathBuf> {
        let image = self.options().image()?;
        check_disk_image(&image)?;
        Ok(image)
    }
    /// Flags and local files only, no network: refused before the plan is printed.
    fn validate(&self, image: &Path) -> Result<()>;
    fn plan(&self, image: &Path) -> Result<Plan>;
    /// Prints the plan (a cloud with a plan of its own shape prints that instead).
    fn print_plan(&self, image: &Path) -> Result<()> {
        self.plan(image)?.print(self.options().json());
        Ok(())
    }
    /// Connects and checks, cheaply, what would make a slow step fail later: credentials (an
    /// authenticated call), region or zone, name clashes. Creates nothing; runs under
    /// `--dry-run` too.
    async fn preflight(&mut self) -> Result<()>;
    fn steps(&self) -> Vec<Self::Step>;
    /// The progress line of a step.
    fn describe(&self, step: Self::Step) -> String;
    /// Runs one step, recording each resource in `created` as soon as it exists.
    async fn create(
        &mut self,
        step: Self::Step,
        context: &StepContext,
        created: &mut Created<Self::Resource>,
    ) -> Result<()>;
    /// After the last step: the VM's public address, and what the upload moved.
    fn outcome(&self) -> Result<(String, UploadStats)>;
    /// Prints the result of a deploy that went through (and runs what follows it, such as the
    /// attestation gate).
    fn finish(&self, deployed: Deployed) -> Result<()> {
        deployed.finish(self.options())
    }
    /// Deletes one resource and waits until it is gone (already gone counts as deleted).
    async fn delete(&self, resource: &Self::Resource) -> Result<()>;
    /// The deployment's resources, found by tag, in creation order.
    async fn find_tagged(&self) -> Result<Vec<Self::Resource>>;
    /// The command that removes the deployment.
    fn cleanup_command(&self) -> String;
    /// Where the deployment is (region, zone), for the result and `list`.
    fn region(&self) -> String;
    fn vm_type(&self) -> String;
}

/// The state directory name of a cloud ("aws", "azure", "gcp", "local").
pub fn cloud_dir(kind: CloudKind) -> &'static str {
    match kind {
        CloudKind::Aws => "aws",
        CloudKind::Azure => "azure",
        CloudKind::Gcp => "gcp",
        CloudKind::Qemu => "local",
    }
}

/// `deploy-<cloud>`: the whole deploy on a runtime of its own.
pub fn run<C: Cloud>(cloud: C) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(deploy(cloud))
}

async fn deploy<C: Cloud>(mut cloud: C) -> Result<()> {
    let options = cloud.options().clone();
    let name = cloud.deployment().to_owned();
    let dir = cloud_dir(C::KIND);
    // Local checks first: nothing is sent, nothing written, for a mistake in the flags.
    let image = cloud.disk_image()?;
    cloud.validate(&image)?;
    check_secure_boot(&image, cloud.secure_boot())?;
    token::check_free(dir, &name, &cloud.cleanup_command())?;
    cloud.print_plan(&image)?;

    step(format!("preflight: {}", C::PREFLIGHT));
    cloud.preflight().await?;
    if options.dry_run {
        step("preflight passed; --dry-run: nothing was created");
        return Ok(());
    }

    let mut token = DeployToken::create(dir, &name, &cloud.cleanup_command())?;
    let context = StepContext {
        image,
        user_data: token.user_data()?,
        token_file: token.path.clone(),
    };
    let mut created = Created::default();
    let steps = cloud.steps();
    for (n, current) in steps.iter().enumerate() {
        step(format!(
            "[{}/{}] {}",
            n + 1,
            steps.len(),
            cloud.describe(*current)
        ));
        let before = created.iter().count();
        let result = match cloud.create(*current, &context, &mut created).await {
            Ok(()) => injected_failure(n + 1),
            Err(error) => Err(error),
        };
        for resource in created.iter().skip(before) {
            crate::output::detail(format_args!(
                "    created {} {}",
                resource.kind(),
                resource.id()
            ));
        }
        if let Err(error) = result {
            crate::output::progress(format_args!(
                "step {} of {} failed ({}); the error follows at the end",
                n + 1,
                steps.len(),
                cloud.describe(*current)
            ));
            after_failure(&cloud, &created, token).await;
            return Err(error.context(format!("deploy-{dir} failed at step {}", n + 1)));
        }
    }
    let (address, upload) = cloud.outcome()?;
    token.keep();
    let deployed = Deployed {
        cloud: dir,
        deployment: name,
        region: cloud.region(),
        vm_type: cloud.vm_type(),
        verify_command: verify_command(&address),
        update_command: update_command(&address, &token.path),
        api_token_file: token.path.clone(),
        cleanup_command: cloud.cleanup_command(),
        address,
        resources: created.records(),
        upload,
    };
    cloud.finish(deployed)
}

/// The test hook (see [`FAIL_AFTER_STEP_ENV`]).
fn injected_failure(step_number: usize) -> Result<()> {
    let wanted = std::env::var(FAIL_AFTER_STEP_ENV)
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok());
    if wanted == Some(step_number) {
        bail!("failure injected after step {step_number} ({FAIL_AFTER_STEP_ENV})");
    }
    Ok(())
}

/// A failed step: keeps everything (`--keep-on-failure`) or rolls back what this run created;
/// the token file goes unless a kept VM carries it.
async fn after_failure<C: Cloud>(cloud: &C, created: &Created<C::Resource>, token: DeployToken) {
    if created.is_empty() {
        eprintln!("deploy failed; it had created nothing");
        token.after_failure(false);
    } else if cloud.options().keep_on_failure {
        report_kept(&created.records(), &cloud.cleanup_command());
        token.after_failure(created.iter().any(CloudResource::is_vm));
    } else {
        let left = roll_back(cloud, created).await;
        if left > 0 {
            eprintln!(
                "{left} resource(s) are left; remove them with: {}",
                cloud.cleanup_command()
            );
        }
        token.after_failure(false);
    }
}

/// Deletes exactly what `created` lists, newest first, saying so for each; returns how many
/// could not be deleted.
pub async fn roll_back<C: Cloud>(cloud: &C, created: &Created<C::Resource>) -> usize {
    eprintln!("deploy failed; deleting what it created, newest first:");
    let mut left = 0;
    for resource in created.iter().rev() {
        match cloud.delete(resource).await {
            Ok(()) => eprintln!("  deleted {} {}", resource.kind(), resource.id()),
            Err(error) => {
                left += 1;
                eprintln!(
                    "  NOT deleted {} {}: {error:#}",
                    resource.kind(),
                    resource.id()
                );
            }
        }
    }
    left
}

/// `cleanup --<cloud> NAME`: finds the deployment by tag, deletes it newest first (or says what
/// it would delete), then its token file.
pub async fn cleanup<C: Cloud>(cloud: &C, dry_run: bool, report: &mut Report) -> Result<()> {
    let name = cloud.deployment();
    let found = cloud.find_tagged().await?;
    let what = format!(
        "tagged {}={name} in {}",
        super::DEPLOYMENT_TAG,
        cloud.region()
    );
    let records: Vec<Resource> = found.iter().map(CloudResource::record).collect();
    let by_id = |record: &Resource| found.iter().find(|r| r.id() == record.id).cloned();
    super::plan::delete_found(&records, &what, dry_run, report, |record| {
        let resource = by_id(&record);
        async move {
            match resource {
                Some(resource) => cloud.delete(&resource).await,
                None => bail!("{} {} vanished from the list", record.kind, record.id),
            }
        }
    })
    .await?;
    token::forget(cloud_dir(C::KIND), name, !found.is_empty(), dry_run, report)
}

/// Polls `check` every `every` until it yields a value, fails, or `limit` passes.
pub async fn poll<T, F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}

/// A raw GPT disk (as `cvm-image build` writes, or a fixed VHD of one): a protective MBR and a
/// primary GPT header with a valid CRC. Refuses anything else, naming what it looks like.
pub fn check_disk_image(image: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 1024];
    let mut file =
        std::fs::File::open(image).with_context(|| format!("disk image {}", image.display()))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let refuse = |what: &str| {
        anyhow::anyhow!(
            "{} is not a raw GPT disk image ({what}): give the disk.raw of `cvm-image build`",
            image.display()
        )
    };
    if read < head.len() {
        return Err(refuse("shorter than an MBR and a GPT header"));
    }
    if &head[512..520] != b"EFI PART" {
        let looks = if head[..read].iter().all(|b| b.is_ascii()) {
            "it looks like a text file"
        } else if head[..2] == [0x1f, 0x8b] {
            "it looks like gzip data, e.g. disk.tar.gz: give disk.raw"
        } else {
            "no GPT header at LBA 1"
        };
        return Err(refuse(looks));
    }
    let size = u32::from_le_bytes([head[524], head[525], head[526], head[527]]) as usize;
    if !(92..=512).contains(&size) {
        return Err(refuse("GPT header size out of range"));
    }
    let mut header = head[512..512 + size].to_vec();
    let stored = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    header[16..20].fill(0);
    if image_builder::gpt::crc32(&header) != stored {
        return Err(refuse("the GPT header's CRC does not match"));
    }
    Ok(())
}

/// Secure Boot on needs a signed UKI: the build's `measurements.json` beside the image says
/// whether it was signed (`"secure_boot": true`). Refused when it says no or cannot be read.
pub fn check_secure_boot(image: &Path, secure_boot: bool) -> Result<()> {
    if !secure_boot {
        return Ok(());
    }
    let measurements = image.with_file_name("measurements.json");
    let signed = std::fs::read(&measurements)
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|value| value.get("secure_boot")?.as_bool());
    match signed {
        Some(true) => Ok(()),
        Some(false) => bail!(
            "--secure-boot: {} says the image's UKI is unsigned (no [secure_boot] in its build \
             config): with Secure Boot on the VM would not boot. Deploy without --secure-boot, or \
             build a signed image (docs/image.md)",
            measurements.display()
        ),
        None => bail!(
            "--secure-boot: cannot tell whether the image's UKI is signed: no readable {} with \
             \"secure_boot\" beside the image (deploy the build's own output folder)",
            measurements.display()
        ),
    }
}

/// Where derived files (the VHD of a raw disk) go: `$XDG_CACHE_HOME/cvm-cli` (else
/// `~/.cache/cvm-cli`), never the build folder.
pub fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let dir = base.join("cvm-cli");
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt_disk(dir: &Path) -> PathBuf {
        let path = dir.join("disk.raw");
        image_builder::gpt::write(&path, &[7; 16], &[]).unwrap();
        path
    }

    #[test]
    fn only_gpt_disks_pass() {
        let dir = tempfile::tempdir().unwrap();
        check_disk_image(&gpt_disk(dir.path())).unwrap();
        let text = dir.path().join("README.md");
        std::fs::write(&text, "# not a disk\n".repeat(200)).unwrap();
        let said = check_disk_image(&text).unwrap_err().to_string();
        assert!(said.contains("looks like a text file"), "{said}");
        let short = dir.path().join("short");
        std::fs::write(&short, b"x").unwrap();
        assert!(check_disk_image(&short).is_err());
        let damaged = gpt_disk(dir.path());
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[512 + 40] ^= 1;
        std::fs::write(&damaged, bytes).unwrap();
        let said = check_disk_image(&damaged).unwrap_err().to_string();
        assert!(said.contains("CRC"), "{said}");
    }

    #[test]
    fn secure_boot_needs_a_signed_build() {
        let dir = tempfile::tempdir().unwrap();
        let image = gpt_disk(dir.path());
        check_secure_boot(&image, false).unwrap();
        assert!(check_secure_boot(&image, true).is_err());
        let measurements = dir.path().join("measurements.json");
        std::fs::write(&measurements, r#"{"secure_boot": false}"#).unwrap();
        let said = check_secure_boot(&image, true).unwrap_err().to_string();
        assert!(said.contains("unsigned"), "{said}");
        std::fs::write(&measurements, r#"{"secure_boot": true}"#).unwrap();
        check_secure_boot(&image, true).unwrap();
    }
}

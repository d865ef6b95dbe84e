//! `cvm-cli deploy-local`: boots an image under QEMU + OVMF with a software TPM, forwards the
//! agent's port to localhost, waits for the agent, and records the TPM's attestation key. The
//! deploy runner drives it like a cloud: checks, plan, preflight, steps, and on a failure the
//! rollback of exactly the processes it started and the state it wrote.
//!
//! Without a TEE nothing in the evidence can vouch for the TPM, so trust comes from here: the
//! swtpm is created by this command, and its AK (a primary key derived from the endorsement seed,
//! the same one the agent creates) is computed before the guest ever runs and saved as `ak.pub`.
//! `cvm-cli verify --trusted-ak <state>/ak.pub` then accepts exactly that TPM.

mod host;
mod process;
mod summary;
mod tpm;

pub use tpm::derive_ak;

use super::blocks::UploadStats;
use super::plan::{Deployed, Plan, SecureBootPlan, TokenPlan};
use super::runner::{self, Cloud, CloudResource, Created, StepContext};
use super::{token, DeployOptions, AGENT_PORT};
use crate::cleanup::Report;
use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud as CloudKind, Tee};
use cvm_attestation::workload::DataUnlock;
use image_builder::boot::{qemu_command, qemu_escape, BootConfig, SnpLaunch};
use process::{Daemon, QEMU, SWTPM};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  cvm-cli deploy-local --image out/tiny/disk.raw --port 18000\n  \
    cvm-cli verify --host 127.0.0.1:18000 --golden golden.json --trusted-ak ~/.local/state/cvm-cli/local/cvm-local/ak.pub\n  \
    cvm-cli cleanup --local cvm-local"
)]
pub struct DeployLocalArgs {
    /// The disk image (disk.raw from `cvm-image build`). Default: the newest `out/*/disk.raw`.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Name of the local VM (its state directory).
    #[arg(long, visible_alias = "vm_name", default_value = "cvm-local")]
    name: String,
    /// Host port forwarded to the agent's external port 8000.
    #[arg(long, default_value_t = 18000)]
    port: u16,
    /// Also forward host port HOST (on 127.0.0.1) to guest port GUEST, e.g. `18080:8080` for a
    /// workload's published port (repeatable).
    #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Where the guest's /data key comes from (docs/data-at-rest.md): `pushed` makes it wait,
    /// locked, for `cvm-cli unlock`; default: the image's own (`ephemeral` on the production
    /// image). Handed over by fw_cfg; the agent records it in PCR 23.
    #[arg(long, value_name = "ephemeral|pushed")]
    data_unlock: Option<cvm_attestation::workload::DataUnlock>,
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// `kvm` when /dev/kvm is usable, otherwise `tcg` (software emulation).
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    accel: String,
    /// How long to wait for the agent to answer.
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
    /// `sev-snp`: launch as an SEV-SNP guest (KVM on an SNP host with QEMU 9.1+), booting the UKI
    /// directly with kernel-hashes=on and printing the expected launch digest; `auto`: SNP when
    /// the host can, else none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "none", "sev-snp"])]
    tee: String,
    /// SEV-SNP firmware: OVMF with SEV metadata and SNP_KERNEL_HASHES (edk2's AmdSevX64 build).
    #[arg(long, default_value = "/usr/share/ovmf/OVMF.amdsev.fd")]
    snp_ovmf: PathBuf,
    /// The image's UKI for the SEV-SNP direct boot (default: uki.efi next to the image).
    #[arg(long)]
    uki: Option<PathBuf>,
    /// Print the plan and stop (after the preflight checks).
    #[arg(long)]
    dry_run: bool,
    /// Keep what was started and written when a step fails (default: stop and delete it again,
    /// saying so).
    #[arg(long)]
    keep_on_failure: bool,
}

/// `HOST:GUEST` port pair of `--forward`.
fn parse_forward(arg: &str) -> std::result::Result<(u16, u16), String> {
    let (host, guest) = arg
        .split_once(':')
        .ok_or_else(|| format!("{arg:?}: expected HOST_PORT:GUEST_PORT, e.g. 18080:8080"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))
    };
    Ok((port(host)?, port(guest)?))
}

/// The vCPU model of SNP guests: it is part of the launch digest.
const SNP_VCPU_TYPE: &str = "EPYC-v4";

/// The fw_cfg entry the guest reads its API token from
/// (`/sys/firmware/qemu_fw_cfg/by_name/opt/cvm/api-token/raw`).
const API_TOKEN_FW_CFG: &str = "opt/cvm/api-token";
/// The fw_cfg entry the guest reads its data key mode from (`cvm-agent provision`).
const DATA_UNLOCK_FW_CFG: &str = "opt/cvm/data-unlock";

/// Files in the state directory.
const TPM_STATE: &str = "tpm-state";
const AK_FILE: &str = "ak.pub";
const SWTPM_SOCKET: &str = "swtpm.sock";
const SERIAL_LOG: &str = "serial.log";
const OVMF_VARS: &str = "OVMF_VARS.fd";

/// What deploy-local creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalResource {
    /// Everything the deploy writes into the state directory but the token (which is the
    /// runner's): TPM state, AK, sockets, logs, PID files, firmware variables.
    State(PathBuf),
    /// The swtpm serving the VM's TPM (its PID).
    Swtpm(i32),
    /// The VM's QEMU (its PID).
    Qemu(i32),
}

impl CloudResource for LocalResource {
    fn kind(&self) -> &'static str {
        match self {
            Self::State(_) => "state-dir",
            Self::Swtpm(_) => "swtpm",
            Self::Qemu(_) => "qemu",
        }
    }

    fn id(&self) -> String {
        match self {
            Self::State(dir) => dir.display().to_string(),
            Self::Swtpm(pid) | Self::Qemu(pid) => pid.to_string(),
        }
    }

    fn is_vm(&self) -> bool {
        matches!(self, Self::Qemu(_))
    }
}

/// The steps of deploy-local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStep {
    /// A new TPM state, and its AK recorded in `ak.pub` before any guest runs.
    Tpm,
    Swtpm,
    Qemu,
    /// The agent answers on the forwarded port.
    Agent,
}

/// One local VM: its settings, and what the steps learned.
pub struct Local {
    args: DeployLocalArgs,
    options: DeployOptions,
    /// The state directory (TPM state, AK, token, logs, PID files).
    dir: PathBuf,
    image: PathBuf,
    accel: String,
    snp: Option<SnpLaunch>,
    /// Seconds until the agent answered.
    up_after: Option<u64>,
}

/// `deploy-local`.
pub fn run(args: DeployLocalArgs) -> Result<()> {
    runner::run(Local::new(args)?)
}

impl Local {
    /// Resolves the image, the state directory, the accelerator and the TEE; `--tee sev-snp` on
    /// a host that cannot launch SNP guests is refused here.
    pub fn new(args: DeployLocalArgs) -> Result<Self> {
        let image = resolve_image(args.image.as_deref(), args.dry_run)?;
        let dir = host::state_dir(&args.name)?;
        let accel = host::accel(&args.accel);
        let snp = snp_launch(&args, &image, &accel)?;
        let options = DeployOptions {
            image: Some(image.clone()),
            dry_run: args.dry_run,
            keep_on_failure: args.keep_on_failure,
            wait_seconds: args.wait_seconds,
            ..DeployOptions::default()
        };
        Ok(Self {
            args,
            options,
            dir,
            image,
            accel,
            snp,
            up_after: None,
        })
    }

    /// A local VM that may exist (`cleanup`, `list`): only its name and state directory count.
    pub fn existing(name: &str) -> Result<Self> {
        Self::at(name, host::state_dir(name)?)
    }

    fn at(name: &str, dir: PathBuf) -> Result<Self> {
        use clap::FromArgMatches;
        let command = DeployLocalArgs::augment_args(clap::Command::new("deploy-local"));
        let matches = command.try_get_matches_from(["deploy-local", "--name", name])?;
        Ok(Self {
            args: DeployLocalArgs::from_arg_matches(&matches)?,
            options: DeployOptions::default(),
            dir,
            image: PathBuf::new(),
            accel: "tcg".into(),
            snp: None,
            up_after: None,
        })
    }

    /// `--port`, then each `--forward`'s host port.
    fn host_ports(&self) -> Vec<u16> {
        std::iter::once(self.args.port)
            .chain(self.args.forwards.iter().map(|(host, _)| *host))
            .collect()
    }

    /// Refuses a running VM of this name, and an earlier one's state: a new VM gets a new TPM.
    fn check_name_free(&self) -> Result<()> {
        let (name, cleanup) = (&self.args.name, self.cleanup_command());
        if let Some(pid) = process::owned_pid(&self.dir, QEMU.pid_file, QEMU.program) {
            bail!(
                "local VM {name:?} is already running (QEMU PID {pid}); stop it with `{cleanup}`"
            );
        }
        let leftovers = std::fs::read_dir(&self.dir).map_or(0, |entries| entries.count());
        if leftovers > 0 {
            bail!(
                "{} holds what an earlier local VM {name:?} left (it is not running); remove it \
                 with `{cleanup}`: a new VM gets a new TPM",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// A new TPM state and its AK in `ak.pub`. The state entry comes first: whatever this
    /// deploy writes into the directory from here on goes with it.
    fn create_tpm(&self, created: &mut Created<LocalResource>) -> Result<()> {
        created.push(LocalResource::State(self.dir.clone()));
        // The TPM's sockets and state live here beside the token: this user only, also when
        // the (empty) directory was there before.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", self.dir.display()))?;
        }
        let state = self.dir.join(TPM_STATE);
        std::fs::create_dir(&state).with_context(|| format!("creating {}", state.display()))?;
        let ak = off_runtime(|| tpm::compute_ak(&state))?;
        std::fs::write(self.dir.join(AK_FILE), encode_base64(&ak))?;
        Ok(())
    }

    /// swtpm on Unix sockets in the 0700 state directory, for QEMU.
    fn start_swtpm(&self, created: &mut Created<LocalResource>) -> Result<()> {
        let dir = &self.dir;
        let status = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate", "--daemon"])
            .arg("--ctrl")
            .arg(format!(
                "type=unixio,path={}",
                dir.join(SWTPM_SOCKET).display()
            ))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.join(TPM_STATE).display()))
            .arg("--pid")
            .arg(format!("file={}", dir.join(SWTPM.pid_file).display()))
            .arg("--log")
            .arg(format!("file={}", dir.join("swtpm.log").display()))
            .status()
            .context("starting swtpm (install the swtpm package)")?;
        if !status.success() {
            bail!(
                "swtpm failed ({status}); see {}",
                dir.join("swtpm.log").display()
            );
        }
        created.push(LocalResource::Swtpm(process::wait_owned(dir, SWTPM)?));
        Ok(())
    }

    /// QEMU, daemonized, with the token and the data key mode handed over by fw_cfg.
    fn start_qemu(
        &self,
        image: &Path,
        token_file: &Path,
        created: &mut Created<LocalResource>,
    ) -> Result<()> {
        let dir = &self.dir;
        let config = self.boot_config(image, token_file)?;
        let vars = dir.join(OVMF_VARS);
        std::fs::copy(&config.ovmf_vars, &vars)
            .with_context(|| format!("copying {}", config.ovmf_vars.display()))?;
        let output = qemu_command(
            &config,
            &vars,
            &dir.join(SERIAL_LOG),
            &dir.join(SWTPM_SOCKET),
        )
        .stderr(Stdio::piped())
        .output()
        .context("starting qemu-system-x86_64 (install qemu-system-x86 and ovmf)")?;
        if !output.status.success() {
            bail!(
                "QEMU failed to start: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        created.push(LocalResource::Qemu(process::wait_owned(dir, QEMU)?));
        Ok(())
    }

    /// The VM's QEMU settings; for SEV-SNP, the launch digest it will have is recorded first.
    fn boot_config(&self, image: &Path, token_file: &Path) -> Result<BootConfig> {
        let mut config = BootConfig::new(image);
        config.memory_mib = self.args.memory_mib;
        config.cpus = self.args.cpus;
        config.accel = self.accel.clone();
        if let Some(launch) = &self.snp {
            self.record_launch_digest(launch)?;
            config.cpu = Some(SNP_VCPU_TYPE.into());
            config.snp = Some(launch.clone());
        }
        let mut netdev = format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{AGENT_PORT}",
            self.args.port
        );
        for (host, guest) in &self.args.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        config.extra_args = vec![
            "-netdev".into(),
            netdev,
            // No option ROM: nothing but the disk is measured at boot (PCR 2 and 4 stay
            // predictable).
            "-device".into(),
            "virtio-net-pci,netdev=net0,romfile=".into(),
            // The agent's API token, handed to the guest by the host like a cloud's metadata
            // service would; the agent measures its hash into PCR 23 with the workload.
            "-fw_cfg".into(),
            format!(
                "name={API_TOKEN_FW_CFG},file={}",
                qemu_escape(&token_file.display().to_string())
            ),
            "-daemonize".into(),
            "-pidfile".into(),
            self.dir.join(QEMU.pid_file).display().to_string(),
        ];
        if let Some(mode) = self.args.data_unlock {
            config.extra_args.extend([
                "-fw_cfg".into(),
                format!("name={DATA_UNLOCK_FW_CFG},string={}", mode.as_str()),
            ]);
        }
        Ok(config)
    }

    /// The digest the AMD Secure Processor will sign, known before the guest exists.
    fn record_launch_digest(&self, launch: &SnpLaunch) -> Result<()> {
        let digest = crate::snp_launch::launch_digest(&crate::snp_launch::LaunchInputs {
            ovmf: launch.ovmf.clone(),
            kernel: Some(launch.uki.clone()),
            initrd: None,
            append: None,
            vcpus: self.args.cpus,
            vcpu_type: SNP_VCPU_TYPE.into(),
            guest_features: 1,
        })?;
        std::fs::write(self.dir.join("snp-launch-digest"), hex::encode(digest))?;
        crate::output::progress(format_args!(
            "  expected SEV-SNP launch digest {} (golden: --snp-measurement)",
            hex::encode(digest)
        ));
        Ok(())
    }

    /// Waits for the agent's /health on the forwarded port; fails early when QEMU is gone.
    fn wait_for_agent(&mut self) -> Result<()> {
        let url = format!("https://127.0.0.1:{}/health", self.args.port);
        let limit = Duration::from_secs(self.args.wait_seconds);
        let (dir, serial) = (&self.dir, self.dir.join(SERIAL_LOG));
        let shown = crate::output::verbosity() >= crate::output::Verbosity::Normal
            && !crate::output::json();
        let started = Instant::now();
        let answered = off_runtime(|| {
            crate::http::wait_for_ok(&url, limit, |seconds| {
                if process::owned_pid(dir, QEMU.pid_file, QEMU.program).is_none() {
                    bail!(
                        "the VM stopped before the agent answered. Last console lines:\n{}",
                        process::tail(&serial, 25)
                    );
                }
                if shown {
                    eprint!("\r  {seconds} s");
                }
                Ok(())
            })
        });
        if shown {
            eprintln!();
        }
        if !answered? {
            bail!(
                "no answer from the agent after {} s. Last console lines:\n{}",
                self.args.wait_seconds,
                process::tail(&serial, 25)
            );
        }
        self.up_after = Some(started.elapsed().as_secs());
        Ok(())
    }
}

/// The image as given (or the newest build output), made absolute: QEMU and the plan name it.
fn resolve_image(given: Option<&Path>, dry_run: bool) -> Result<PathBuf> {
    let requested = match given {
        Some(image) => image.to_owned(),
        None => super::newest_build_output(Path::new("out"))?,
    };
    match requested.canonicalize() {
        Ok(image) => Ok(image),
        // A dry run only describes the plan; the image may not be built yet.
        Err(_) if dry_run => Ok(requested),
        Err(e) => Err(e).with_context(|| {
            format!(
                "disk image {} (build one with `cvm-image build`)",
                requested.display()
            )
        }),
    }
}

/// The SEV-SNP launch of `--tee sev-snp` (or `auto` on a host that can), none otherwise.
fn snp_launch(args: &DeployLocalArgs, image: &Path, accel: &str) -> Result<Option<SnpLaunch>> {
    match (args.tee.as_str(), host::snp_host(accel)) {
        ("none", _) | ("auto", Err(_)) => Ok(None),
        (_, Ok((cbitpos, reduced_phys_bits))) => Ok(Some(SnpLaunch {
            ovmf: args.snp_ovmf.clone(),
            uki: args
                .uki
                .clone()
                .unwrap_or_else(|| image.with_file_name("uki.efi")),
            cbitpos,
            reduced_phys_bits,
        })),
        (_, Err(reason)) => {
            bail!("--tee sev-snp: this host cannot launch SEV-SNP guests: {reason}")
        }
    }
}

/// Runs blocking work that may start a runtime of its own (the agent's health poll) on a thread
/// of its own, outside the deploy's runtime.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Removes everything in the state directory but the token file (the runner's to keep or
/// remove).
fn remove_state(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries.with_context(|| format!("reading {}", dir.display()))?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == token::TOKEN_FILE {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type()?.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

impl Cloud for Local {
    type Resource = LocalResource;
    type Step = LocalStep;
    const KIND: CloudKind = CloudKind::Qemu;
    const PREFLIGHT: &'static str =
        "QEMU, OVMF and swtpm installed, ports free, no local VM of this name";

    fn deployment(&self) -> &str {
        &self.args.name
    }

    fn options(&self) -> &DeployOptions {
        &self.options
    }

    /// The image as resolved; whether it is a GPT disk is checked in `validate`, after the
    /// flags.
    fn disk_image(&self) -> Result<PathBuf> {
        Ok(self.image.clone())
    }

    fn validate(&self, image: &Path) -> Result<()> {
        // The agent would refuse at start anyway: say so before a VM exists (SNP's derived key
        // is a root inside the TEE; swtpm is this host's).
        if self.args.data_unlock == Some(DataUnlock::Sealed) && self.snp.is_none() {
            bail!(
                "--data-unlock sealed: a local QEMU VM without SEV-SNP has no root of trust \
                 inside a TEE to keep the key (its TPM is this host's swtpm); use `pushed` \
                 (cvm-cli unlock after verifying) or `ephemeral`"
            );
        }
        host::check_distinct(&self.host_ports())?;
        if self.args.dry_run && !image.exists() {
            return Ok(());
        }
        runner::check_disk_image(image)
    }

    fn plan(&self, image: &Path) -> Result<Plan> {
        Ok(Plan {
            cloud: Self::KIND,
            deployment: self.args.name.clone(),
            region: self.region(),
            vm_type: self.vm_type(),
            tee: match self.snp {
                Some(_) => Tee::SevSnp,
                None => Tee::None,
            },
            image: image.to_owned(),
            image_bytes: std::fs::metadata(image).map_or(0, |meta| meta.len()),
            ports: self.host_ports(),
            allow_from: vec!["127.0.0.1/32".into()],
            warnings: Vec::new(),
            api_token: TokenPlan {
                file: self.dir.join(token::TOKEN_FILE),
                passed_via: format!("QEMU fw_cfg {API_TOKEN_FW_CFG}"),
            },
            secure_boot: SecureBootPlan::off(),
            steps: self.steps().into_iter().map(|s| self.describe(s)).collect(),
        })
    }

    /// deploy-local's own plan: the TPM state's place is what scripts read from it.
    fn print_plan(&self, image: &Path) -> Result<()> {
        let plan = self.plan(image)?;
        summary::LocalPlan {
            name: plan.deployment,
            image: plan.image,
            accel: self.accel.clone(),
            memory_mib: self.args.memory_mib,
            cpus: self.args.cpus,
            snp: self.snp.as_ref().map(|launch| summary::SnpPlan {
                ovmf: launch.ovmf.clone(),
                uki: launch.uki.clone(),
            }),
            tpm_state: self.dir.join(TPM_STATE),
            agent: format!(
                "https://127.0.0.1:{} -> guest port {AGENT_PORT}",
                self.args.port
            ),
            forwards: summary::forwards(&self.args.forwards),
            data_unlock: self.args.data_unlock.map(|mode| mode.as_str()),
            api_token_file: plan.api_token.file,
            steps: plan.steps,
        }
        .print()
    }

    async fn preflight(&mut self) -> Result<()> {
        self.check_name_free()?;
        host::check_tools(self.snp.as_ref())?;
        host::check_ports_free(&self.host_ports())
    }

    fn steps(&self) -> Vec<LocalStep> {
        vec![
            LocalStep::Tpm,
            LocalStep::Swtpm,
            LocalStep::Qemu,
            LocalStep::Agent,
        ]
    }

    fn describe(&self, step: LocalStep) -> String {
        match step {
            LocalStep::Tpm => "creating the software TPM and recording its attestation key".into(),
            LocalStep::Swtpm => "starting swtpm".into(),
            LocalStep::Qemu => "starting QEMU".into(),
            LocalStep::Agent => {
                format!("waiting for the agent (up to {} s)", self.args.wait_seconds)
            }
        }
    }

    async fn create(
        &mut self,
        step: LocalStep,
        context: &StepContext,
        created: &mut Created<LocalResource>,
    ) -> Result<()> {
        match step {
            LocalStep::Tpm => self.create_tpm(created),
            LocalStep::Swtpm => self.start_swtpm(created),
            LocalStep::Qemu => self.start_qemu(&context.image, &context.token_file, created),
            LocalStep::Agent => self.wait_for_agent(),
        }
    }

    fn outcome(&self) -> Result<(String, UploadStats)> {
        Ok(("127.0.0.1".into(), UploadStats::default()))
    }

    /// deploy-local's own result (`{"deployed"}` with the pinned AK and the console log).
    fn finish(&self, deployed: Deployed) -> Result<()> {
        let (port, ak) = (self.args.port, self.dir.join(AK_FILE));
        let token_file = deployed.api_token_file;
        summary::LocalDeployed {
            name: deployed.deployment,
            up_after_seconds: self.up_after.unwrap_or_default(),
            agent: format!("https://127.0.0.1:{port}"),
            verify_command: format!(
                "cvm-cli verify --host 127.0.0.1:{port} --golden golden.json --trusted-ak {}",
                ak.display()
            ),
            update_command: format!(
                "cvm-cli update-workload --host 127.0.0.1:{port} --token-file {} --workload \
                 workload",
                token_file.display()
            ),
            pinned_ak: ak,
            forwards: summary::forwards(&self.args.forwards),
            api_token_file: token_file,
            console_log: self.dir.join(SERIAL_LOG),
        }
        .print()
    }

    async fn delete(&self, resource: &LocalResource) -> Result<()> {
        match resource {
            LocalResource::Qemu(pid) => process::stop(&self.dir, QEMU, *pid),
            LocalResource::Swtpm(pid) => process::stop(&self.dir, SWTPM, *pid),
            LocalResource::State(dir) => remove_state(dir),
        }
    }

    /// The state directory, and the processes its PID files name that are still this VM's.
    async fn find_tagged(&self) -> Result<Vec<LocalResource>> {
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut found = vec![LocalResource::State(self.dir.clone())];
        let running =
            |daemon: Daemon| process::owned_pid(&self.dir, daemon.pid_file, daemon.program);
        found.extend(running(SWTPM).map(LocalResource::Swtpm));
        found.extend(running(QEMU).map(LocalResource::Qemu));
        Ok(found)
    }

    fn cleanup_command(&self) -> String {
        format!("cvm-cli cleanup --local {}", self.args.name)
    }

    fn region(&self) -> String {
        "127.0.0.1".into()
    }

    fn vm_type(&self) -> String {
        format!(
            "QEMU {}, {} vCPU, {} MiB",
            self.accel, self.args.cpus, self.args.memory_mib
        )
    }
}

/// `cleanup --local NAME`: stops the VM's own processes and deletes its state directory.
pub fn cleanup(name: &str, dry_run: bool, report: &mut Report) -> Result<()> {
    cleanup_in(&Local::existing(name)?, dry_run, report)
}

fn cleanup_in(local: &Local, dry_run: bool, report: &mut Report) -> Result<()> {
    let (dir, name) = (&local.dir, &local.args.name);
    if !dir.exists() {
        bail!("no local VM named {name:?} (looked in {})", dir.display());
    }
    note_reused_pids(dir, report);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let found = runtime.block_on(local.find_tagged())?;
    let id = dir.display().to_string();
    if dry_run {
        let running: Vec<String> = found
            .iter()
            .filter(|resource| !matches!(resource, LocalResource::State(_)))
            .map(|resource| format!("{} PID {}", resource.kind(), resource.id()))
            .collect();
        let line = format!(
            "would stop and remove local VM {name:?} (running: {})",
            if running.is_empty() {
                "nothing".into()
            } else {
                running.join(", ")
            }
        );
        report.deleted("local VM", &id, line);
        return Ok(());
    }
    for resource in found.iter().rev() {
        if let Err(error) = runtime.block_on(local.delete(resource)) {
            let (kind, what) = (resource.kind(), resource.id());
            let line = format!("could not stop {kind} {what}: {error:#}");
            report.failed(kind, &what, &error, &line);
        }
    }
    if !report.failed.is_empty() {
        bail!("local VM {name:?} is not removed: its processes could not all be stopped");
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    report.deleted(
        "local VM",
        &id,
        format_args!("stopped and removed local VM {name:?}"),
    );
    Ok(())
}

/// Says which PID files name a live process that is not this VM's any more (left running).
fn note_reused_pids(dir: &Path, report: &mut Report) {
    for daemon in [QEMU, SWTPM] {
        let Some(pid) = process::read_pid(&dir.join(daemon.pid_file)) else {
            continue;
        };
        if process::owned_pid(dir, daemon.pid_file, daemon.program).is_none()
            && process::pid_exists(pid)
        {
            report.note(format!(
                "not stopping PID {pid} from {}: it is not this VM's {} any more (the PID was \
                 reused); left running",
                daemon.pid_file, daemon.program
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Kills and reaps a test's child process.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper(arg0: &str, extra: &[&str]) -> Child {
        Child(
            Command::new("sh")
                .arg0(arg0)
                .args(["-c", "sleep 600; :"])
                .args(extra)
                .spawn()
                .unwrap(),
        )
    }

    #[test]
    fn cleanup_leaves_a_reused_pid_alone() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("cvm-cli/local/vm");
        std::fs::create_dir_all(&dir).unwrap();
        // The PID now belongs to an unrelated process.
        let mut unrelated = sleeper("sleep", &[]);
        std::fs::write(dir.join("qemu.pid"), unrelated.0.id().to_string()).unwrap();
        std::fs::write(dir.join("swtpm.pid"), unrelated.0.id().to_string()).unwrap();
        assert_eq!(process::owned_pid(&dir, "qemu.pid", "qemu-system"), None);
        let local = Local::at("vm", dir.clone()).unwrap();
        let mut report = Report::default();
        cleanup_in(&local, false, &mut report).unwrap();
        assert!(
            unrelated.0.try_wait().unwrap().is_none(),
            "cleanup signalled a process it did not start"
        );
        assert!(report.notes.iter().any(|note| note.contains("reused")));
        assert!(!dir.exists());
    }

    #[test]
    fn cleanup_stops_the_vms_own_processes() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("cvm-cli/local/vm");
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("qemu.pid").display().to_string();
        let mut qemu = sleeper("qemu-system-x86_64", &[&pidfile]);
        std::fs::write(dir.join("qemu.pid"), qemu.0.id().to_string()).unwrap();
        // Another VM's QEMU (same program, another state directory) is not this one's.
        let other = format!("{}2/qemu.pid", dir.display());
        let mut neighbour = sleeper("qemu-system-x86_64", &[&other]);
        std::fs::write(dir.join("swtpm.pid"), neighbour.0.id().to_string()).unwrap();
        assert_eq!(
            process::owned_pid(&dir, "qemu.pid", "qemu-system"),
            Some(qemu.0.id() as i32)
        );
        assert_eq!(process::owned_pid(&dir, "swtpm.pid", "swtpm"), None);
        let local = Local::at("vm", dir.clone()).unwrap();
        // A dry run names the running QEMU and touches nothing.
        let mut report = Report::default();
        cleanup_in(&local, true, &mut report).unwrap();
        assert!(dir.join("qemu.pid").exists());
        assert!(qemu.0.try_wait().unwrap().is_none());
        cleanup_in(&local, false, &mut Report::default()).unwrap();
        assert!(qemu.0.wait().is_ok_and(|status| !status.success()));
        assert!(neighbour.0.try_wait().unwrap().is_none());
        assert!(!dir.exists());
    }

    #[test]
    fn forwards_name_what_is_wrong() {
        assert_eq!(parse_forward("18080:8080"), Ok((18080, 8080)));
        assert!(parse_forward("18080")
            .unwrap_err()
            .contains("HOST_PORT:GUEST_PORT"));
        assert!(parse_forward("0:8080").unwrap_err().contains("\"0\""));
        assert!(parse_forward("18080:http")
            .unwrap_err()
            .contains("\"http\""));
    }

    #[test]
    fn snp_launch_replaces_the_pflash_firmware() {
        let mut config = BootConfig::new("/images/disk.raw");
        config.snp = Some(SnpLaunch {
            ovmf: "/fw/OVMF.amdsev.fd".into(),
            uki: "/images/uki.efi".into(),
            cbitpos: 51,
            reduced_phys_bits: 1,
        });
        let command = qemu_command(
            &config,
            Path::new("/s/vars"),
            Path::new("/s/serial"),
            Path::new("/s/tpm"),
        );
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined
            .contains("sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"));
        assert!(joined.contains("-bios /fw/OVMF.amdsev.fd -kernel /images/uki.efi"));
        assert!(joined.contains("confidential-guest-support=sev0"));
        assert!(!joined.contains("pflash"), "{joined}");
    }

    #[test]
    fn the_state_goes_but_the_token_stays_for_the_runner() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("vm");
        std::fs::create_dir_all(dir.join(TPM_STATE)).unwrap();
        std::fs::write(dir.join(TPM_STATE).join("tpm2-00.permall"), b"x").unwrap();
        for file in [AK_FILE, SERIAL_LOG, token::TOKEN_FILE] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        remove_state(&dir).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, [token::TOKEN_FILE]);
        remove_state(&state.path().join("missing")).unwrap();
    }
}

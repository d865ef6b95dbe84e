//! `cvm-cli deploy-local`: boots an image under QEMU + OVMF with a software TPM, forwards the
//! agent's port to localhost, waits for the agent, and records the TPM's attestation key.
//!
//! Without a TEE nothing in the evidence can vouch for the TPM, so trust comes from here: the
//! swtpm is created by this command, and its AK (a primary key derived from the endorsement seed,
//! the same one the agent creates) is computed before the guest ever runs and saved as `ak.pub`.
//! `cvm-cli verify --trusted-ak <state>/ak.pub` then accepts exactly that TPM.

use crate::deploy::token::write_api_token;
use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::encoding::encode_base64;
use image_builder::boot::{qemu_command, qemu_escape, BootConfig, SnpLaunch};
use serde::Serialize;
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
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
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

/// Why this host cannot launch SEV-SNP guests, or the host's C-bit position and reduced
/// physical address bits when it can.
fn snp_host(accel: &str) -> std::result::Result<(u32, u32), String> {
    let enabled = std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .map(|value| matches!(value.trim(), "Y" | "1"))
        .unwrap_or(false);
    if !enabled {
        return Err("kvm_amd has no SEV-SNP (sev_snp parameter absent or off)".into());
    }
    if !Path::new("/dev/sev").exists() {
        return Err("/dev/sev missing".into());
    }
    if accel != "kvm" {
        return Err("SEV-SNP needs KVM".into());
    }
    let version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    if !qemu_supports_snp(&version) {
        return Err(format!(
            "QEMU 9.1 or later needed for SEV-SNP guests ({})",
            version.lines().next().unwrap_or("no qemu-system-x86_64")
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0x8000001F (AMD memory encryption) exists on every SEV host.
        let leaf = std::arch::x86_64::__cpuid(0x8000_001f);
        Ok((leaf.ebx & 0x3f, (leaf.ebx >> 6) & 0x3f))
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err("not an x86_64 host".into())
}

/// `QEMU emulator version X.Y.Z ...` with X.Y >= 9.1.
fn qemu_supports_snp(version_output: &str) -> bool {
    let version = version_output
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .unwrap_or_default();
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (9, 1)
}

/// Where a local VM keeps its TPM state, AK, serial log and process IDs.
pub fn state_dir(name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("VM name {name:?}: use letters, digits, '-' and '_'");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .context("neither XDG_STATE_HOME nor HOME is set")?;
    state_dir_under(&base, name)
}

/// `<base>/cvm-cli/local/<name>`, refused when it holds a comma: its paths become swtpm option
/// values (`dir=...`, `path=...`), which swtpm splits at commas with no way to escape them, so a
/// comma in XDG_STATE_HOME or HOME would inject swtpm options.
fn state_dir_under(base: &Path, name: &str) -> Result<PathBuf> {
    let dir = base.join("cvm-cli/local").join(name);
    if dir.to_string_lossy().contains(',') {
        bail!(
            "state directory {} contains ',', which swtpm cannot take in an option value: set \
             XDG_STATE_HOME to a directory without commas",
            dir.display()
        );
    }
    Ok(dir)
}

/// KVM only where it can run a guest: /dev/kvm must open and the CPU must expose VMX or SVM
/// (inside a VM without nested virtualization /dev/kvm may exist while guests cannot run).
fn accel(requested: &str) -> String {
    match requested {
        "auto" => {
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let extensions = cpuinfo
                .lines()
                .filter(|line| line.starts_with("flags"))
                .any(|line| {
                    line.split_whitespace()
                        .any(|flag| flag == "vmx" || flag == "svm")
                });
            if device && extensions { "kvm" } else { "tcg" }.into()
        }
        other => other.into(),
    }
}

pub fn deploy(args: DeployLocalArgs) -> Result<()> {
    let requested = match &args.image {
        Some(image) => image.clone(),
        None => crate::deploy::newest_build_output(Path::new("out"))?,
    };
    let image = match requested.canonicalize() {
        Ok(image) => image,
        // A dry run only describes the plan; the image may not be built yet.
        Err(_) if args.dry_run => requested.clone(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "disk image {} (build one with `cvm-image build`)",
                    requested.display()
                )
            })
        }
    };
    let dir = state_dir(&args.name)?;
    let accel = accel(&args.accel);
    let snp = match (args.tee.as_str(), snp_host(&accel)) {
        ("none", _) | ("auto", Err(_)) => None,
        (_, Ok((cbitpos, reduced_phys_bits))) => {
            let uki = args
                .uki
                .clone()
                .unwrap_or_else(|| image.with_file_name("uki.efi"));
            Some(SnpLaunch {
                ovmf: args.snp_ovmf.clone(),
                uki,
                cbitpos,
                reduced_phys_bits,
            })
        }
        (_, Err(reason)) => {
            bail!("--tee sev-snp: this host cannot launch SEV-SNP guests: {reason}")
        }
    };
    // The agent would refuse at start anyway: say so before a VM exists (SNP's derived key is a
    // root inside the TEE; swtpm is this host's).
    if args.data_unlock == Some(cvm_attestation::workload::DataUnlock::Sealed) && snp.is_none() {
        bail!(
            "--data-unlock sealed: a local QEMU VM without SEV-SNP has no root of trust inside a \
             TEE to keep the key (its TPM is this host's swtpm); use `pushed` (cvm-cli unlock \
             after verifying) or `ephemeral`"
        );
    }
    LocalPlan::new(&args, &image, &dir, &accel, snp.as_ref()).print()?;
    if args.dry_run {
        return Ok(());
    }
    if owned_pid(&dir, "qemu.pid", "qemu-system").is_some() {
        bail!(
            "local VM {:?} is already running; stop it with `cvm-cli cleanup --local {}`",
            args.name,
            args.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tpm-state"))
        .with_context(|| format!("creating {}", dir.display()))?;
    // The TPM's sockets, state and the API token live here: this user only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }

    step("creating the software TPM and recording its attestation key");
    let ak = compute_ak(&dir.join("tpm-state"))?;
    let ak_path = dir.join("ak.pub");
    std::fs::write(&ak_path, encode_base64(&ak))?;
    let token_path = write_api_token(&dir)?;

    step("starting swtpm");
    let socket = dir.join("swtpm.sock");
    let status = Command::new("swtpm")
        .args(["socket", "--tpm2", "--terminate", "--daemon"])
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("tpm-state").display()))
        .arg("--pid")
        .arg(format!("file={}", dir.join("swtpm.pid").display()))
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

    step("starting QEMU");
    let vars = dir.join("OVMF_VARS.fd");
    let mut config = BootConfig::new(&image);
    std::fs::copy(&config.ovmf_vars, &vars)
        .with_context(|| format!("copying {}", config.ovmf_vars.display()))?;
    config.memory_mib = args.memory_mib;
    config.cpus = args.cpus;
    config.accel = accel;
    if let Some(launch) = snp {
        // The digest the AMD Secure Processor will sign, known before the guest exists.
        let digest = crate::snp_launch::launch_digest(&crate::snp_launch::LaunchInputs {
            ovmf: launch.ovmf.clone(),
            kernel: Some(launch.uki.clone()),
            initrd: None,
            append: None,
            vcpus: args.cpus,
            vcpu_type: SNP_VCPU_TYPE.into(),
            guest_features: 1,
        })?;
        std::fs::write(dir.join("snp-launch-digest"), hex::encode(digest))?;
        crate::output::progress(format_args!(
            "  expected SEV-SNP launch digest {} (golden: --snp-measurement)",
            hex::encode(digest)
        ));
        config.cpu = Some(SNP_VCPU_TYPE.into());
        config.snp = Some(launch);
    }
    let mut netdev = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:8000", args.port);
    for (host, guest) in &args.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    config.extra_args = vec![
        "-netdev".into(),
        netdev,
        // No option ROM: nothing but the disk is measured at boot (PCR 2 and 4 stay predictable).
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
        // The agent's API token, handed to the guest by the host like a cloud's metadata service
        // would; the agent measures its hash into PCR 23 with the workload.
        "-fw_cfg".into(),
        format!(
            "name={API_TOKEN_FW_CFG},file={}",
            qemu_escape(&token_path.display().to_string())
        ),
        "-daemonize".into(),
        "-pidfile".into(),
        dir.join("qemu.pid").display().to_string(),
    ];
    if let Some(mode) = args.data_unlock {
        config.extra_args.extend([
            "-fw_cfg".into(),
            format!("name={DATA_UNLOCK_FW_CFG},string={}", mode.as_str()),
        ]);
    }
    let serial = dir.join("serial.log");
    let output = qemu_command(&config, &vars, &serial, &socket)
        .stderr(Stdio::piped())
        .output()
        .context("starting qemu-system-x86_64 (install qemu-system-x86 and ovmf)")?;
    if !output.status.success() {
        bail!(
            "QEMU failed to start: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    step("waiting for the agent");
    let url = format!("https://127.0.0.1:{}/health", args.port);
    let started = Instant::now();
    let answered =
        crate::http::wait_for_ok(&url, Duration::from_secs(args.wait_seconds), |seconds| {
            if owned_pid(&dir, "qemu.pid", "qemu-system").is_none() {
                bail!(
                    "the VM stopped before the agent answered. Last console lines:\n{}",
                    tail(&serial, 25)
                );
            }
            if crate::output::verbosity() >= crate::output::Verbosity::Normal
                && !crate::output::json()
            {
                eprint!("\r  {seconds} s");
            }
            Ok(())
        })?;
    if !answered {
        bail!(
            "no answer from the agent after {} s. Last console lines:\n{}",
            args.wait_seconds,
            tail(&serial, 25)
        );
    }
    if crate::output::verbosity() >= crate::output::Verbosity::Normal && !crate::output::json() {
        eprintln!();
    }
    LocalDeployed {
        name: args.name.clone(),
        up_after_seconds: started.elapsed().as_secs(),
        agent: format!("https://127.0.0.1:{}", args.port),
        pinned_ak: ak_path.clone(),
        forwards: forwards(&args.forwards),
        api_token_file: token_path.clone(),
        console_log: serial,
        verify_command: format!(
            "cvm-cli verify --host 127.0.0.1:{} --golden golden.json --trusted-ak {}",
            args.port,
            ak_path.display()
        ),
        update_command: format!(
            "cvm-cli update-workload --host 127.0.0.1:{} --token-file {} --workload workload",
            args.port,
            token_path.display()
        ),
    }
    .print()
}

/// `127.0.0.1:HOST -> guest port GUEST`, for each `--forward`.
fn forwards(pairs: &[(u16, u16)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(host, guest)| format!("127.0.0.1:{host} -> guest port {guest}"))
        .collect()
}

/// What `deploy-local` will do: progress text on stderr, or `{"plan"}` on stdout with `--json`
/// (the result of a `--dry-run`).
#[derive(Debug, Serialize)]
struct LocalPlan {
    name: String,
    image: PathBuf,
    accel: String,
    memory_mib: u32,
    cpus: u32,
    /// SEV-SNP's firmware and directly booted UKI; none: the TPM is trusted by its recorded AK.
    snp: Option<SnpPlan>,
    tpm_state: PathBuf,
    agent: String,
    forwards: Vec<String>,
    data_unlock: Option<&'static str>,
    api_token_file: PathBuf,
}

#[derive(Debug, Serialize)]
struct SnpPlan {
    ovmf: PathBuf,
    uki: PathBuf,
}

impl LocalPlan {
    fn new(
        args: &DeployLocalArgs,
        image: &Path,
        dir: &Path,
        accel: &str,
        snp: Option<&SnpLaunch>,
    ) -> Self {
        Self {
            name: args.name.clone(),
            image: image.to_path_buf(),
            accel: accel.to_owned(),
            memory_mib: args.memory_mib,
            cpus: args.cpus,
            snp: snp.map(|launch| SnpPlan {
                ovmf: launch.ovmf.clone(),
                uki: launch.uki.clone(),
            }),
            tpm_state: dir.join("tpm-state"),
            agent: format!("https://127.0.0.1:{} -> guest port 8000", args.port),
            forwards: forwards(&args.forwards),
            data_unlock: args.data_unlock.map(|mode| mode.as_str()),
            api_token_file: dir.join("api-token"),
        }
    }

    fn print(&self) -> Result<()> {
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
        Ok(())
    }
}

/// A local VM that answered: text on stdout, or `{"deployed"}` with `--json`.
#[derive(Debug, Serialize)]
struct LocalDeployed {
    name: String,
    up_after_seconds: u64,
    agent: String,
    pinned_ak: PathBuf,
    forwards: Vec<String>,
    api_token_file: PathBuf,
    console_log: PathBuf,
    verify_command: String,
    update_command: String,
}

impl LocalDeployed {
    fn print(&self) -> Result<()> {
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

/// The vCPU model of SNP guests: it is part of the launch digest.
const SNP_VCPU_TYPE: &str = "EPYC-v4";

/// The fw_cfg entry the guest reads its API token from
/// (`/sys/firmware/qemu_fw_cfg/by_name/opt/cvm/api-token/raw`).
const API_TOKEN_FW_CFG: &str = "opt/cvm/api-token";
/// The fw_cfg entry the guest reads its data key mode from (`cvm-agent provision`).
const DATA_UNLOCK_FW_CFG: &str = "opt/cvm/data-unlock";

/// Stops a local VM started by deploy-local and deletes its state.
pub fn cleanup(name: &str, report: &mut crate::cleanup::Report) -> Result<()> {
    cleanup_in(&state_dir(name)?, name, report)
}

fn cleanup_in(dir: &Path, name: &str, report: &mut crate::cleanup::Report) -> Result<()> {
    let dir = dir.to_path_buf();
    if !dir.exists() {
        bail!("no local VM named {name:?} (looked in {})", dir.display());
    }
    for (pid_file, program) in [("qemu.pid", "qemu-system"), ("swtpm.pid", "swtpm")] {
        match owned_pid(&dir, pid_file, program) {
            Some(pid) => {
                // SAFETY: plain syscall; the PID is, right now, this VM's QEMU or swtpm.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            None => {
                if let Some(pid) = read_pid(&dir.join(pid_file)) {
                    if pid_exists(pid) {
                        report.note(format!(
                            "not stopping PID {pid} from {pid_file}: it is not this VM's \
                             {program} any more (the PID was reused); left running"
                        ));
                    }
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    let id = dir.display().to_string();
    report.deleted(
        "local VM",
        &id,
        format_args!("stopped and removed local VM {name:?}"),
    );
    Ok(())
}

/// A progress line on stderr (stdout is for the result); silent with `-q` and `--json`.
fn step(what: &str) {
    crate::output::progress(format_args!("==> {what}"));
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pid_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The PID in `<dir>/<pid_file>` when that process is still the one this command started: a
/// `program` (e.g. `qemu-system`, `swtpm`) whose command line names `dir` (its pidfile, state
/// and sockets are there). A PID is reused once its process is gone, and signalling whatever
/// holds it now could stop an unrelated process.
fn owned_pid(dir: &Path, pid_file: &str, program: &str) -> Option<i32> {
    let pid = read_pid(&dir.join(pid_file)).filter(|&pid| pid > 0)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let argv0 = args.next()?;
    let name = argv0.rsplit('/').next().unwrap_or_default();
    let dir = format!("{}/", dir.display());
    (name.starts_with(program) && args.any(|arg| arg.contains(&dir))).then_some(pid)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Arguments of `cvm-cli tpm-ak`.
#[derive(Debug, Args)]
pub struct TpmAkArgs {
    /// The TPM, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    #[arg(long)]
    tcti: String,
}

/// The attestation key the agent will create on this TPM (TPMT_PUBLIC, base64): run it on a TPM
/// you created, before any guest uses it, and pin the result with `verify --trusted-ak`.
pub fn tpm_ak(args: TpmAkArgs) -> Result<()> {
    let ak = encode_base64(&derive_ak(&args.tcti)?);
    if crate::output::json() {
        return crate::output::print_json(&serde_json::json!({ "ak": ak }));
    }
    println!("{ak}");
    Ok(())
}

/// The agent's AK on the TPM at `tcti`: the same template gives the same primary key.
fn derive_ak(tcti: &str) -> Result<Vec<u8>> {
    let mut tpm = cvm_attester::Tpm::open(tcti)?;
    Ok(tpm.attestation_key(None)?.public)
}

/// Starts the new TPM once over TCP, derives the AK exactly as the agent will, and stops it.
///
/// Over TCP because the TPM library (tss-esapi 7.7) only expresses `swtpm:host=,port=`: tpm2-tss's
/// swtpm TCTI could take a Unix socket (`path=`), but tss-esapi cannot pass it. The ports are
/// chosen here and then bound by swtpm, so another local user could bind them in between and
/// serve a TPM of their own, whose AK would then be pinned. Hence the AK is derived only once
/// both listening sockets on 127.0.0.1 are proven to belong to the swtpm started here (its
/// `/proc/<pid>/fd`); a listening port cannot be taken over afterwards. Other local users can
/// still connect to that genuine TPM for the second this lasts, but not stand in for it. The
/// swtpm QEMU uses afterwards is on Unix sockets in the 0700 state directory.
fn compute_ak(state: &Path) -> Result<Vec<u8>> {
    let mut last = None;
    for _ in 0..8 {
        let port = free_port_pair()?;
        match compute_ak_on(state, port) {
            Ok(ak) => return Ok(ak),
            // Lost the ports to someone else between choosing and binding: choose again.
            Err(e) if e.downcast_ref::<PortTaken>().is_some() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("loop ran"))
}

/// Two consecutive free loopback ports (tpm2-tss's swtpm TCTI wants control on port + 1), from
/// below Linux's ephemeral range (32768-60999): there the port after a free one is usually an even
/// port the kernel hands to outgoing connections, so under load no pair is found.
fn free_port_pair() -> Result<u16> {
    for _ in 0..256 {
        let mut random = [0u8; 2];
        openssl::rand::rand_bytes(&mut random)?;
        let port = 20_000 + u16::from_le_bytes(random) % 12_000;
        let first = std::net::TcpListener::bind(("127.0.0.1", port));
        let second = std::net::TcpListener::bind(("127.0.0.1", port + 1));
        if first.is_ok() && second.is_ok() {
            return Ok(port);
        }
    }
    bail!("no two consecutive free loopback ports in 20000-32000")
}

/// swtpm did not get the ports it was given (something else listens there).
#[derive(Debug)]
struct PortTaken(String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PortTaken {}

/// [`compute_ak`] with swtpm told to listen on 127.0.0.1:`port` (commands) and `port + 1`.
fn compute_ak_on(state: &Path, port: u16) -> Result<Vec<u8>> {
    let mut swtpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting swtpm (install the swtpm package)")?;
    let result = (|| -> Result<Vec<u8>> {
        let pid = swtpm.id();
        let started = Instant::now();
        loop {
            if let Some(status) = swtpm.try_wait()? {
                return Err(PortTaken(format!(
                    "swtpm exited ({status}) before listening on 127.0.0.1:{port}-{}: is \
                     another process holding the ports?",
                    port + 1
                ))
                .into());
            }
            let owners = [port, port + 1].map(|p| listeners_owned_by(p, pid));
            if owners.iter().all(|owned| *owned == Some(true)) {
                break;
            }
            if owners.contains(&Some(false)) && started.elapsed() > Duration::from_secs(2) {
                return Err(PortTaken(format!(
                    "another process listens on 127.0.0.1:{port} or {}, not the swtpm started \
                     here: its TPM's key will not be pinned",
                    port + 1
                ))
                .into());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("swtpm did not start listening on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        derive_ak(&format!("swtpm:host=127.0.0.1,port={port}"))
    })();
    let _ = swtpm.kill();
    let _ = swtpm.wait();
    result
}

/// Whether every TCP listener on `port` (any address, IPv4 and IPv6) is a socket of process
/// `pid`, with at least one on 127.0.0.1; `None` while nothing listens there.
fn listeners_owned_by(port: u16, pid: u32) -> Option<bool> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let Some((address, hex_port)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16).ok() == Some(port) {
                listeners.push((address.to_owned(), format!("socket:[{inode}]")));
            }
        }
    }
    if listeners.is_empty() {
        return None;
    }
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .map(|target| target.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let all_ours = listeners.iter().all(|(_, socket)| sockets.contains(socket));
    // 127.0.0.1 as /proc/net/tcp prints it (little-endian hex).
    let on_loopback = listeners.iter().any(|(address, _)| address == "0100007F");
    Some(all_ours && on_loopback)
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
        assert_eq!(owned_pid(&dir, "qemu.pid", "qemu-system"), None);
        cleanup_in(&dir, "vm", &mut Default::default()).unwrap();
        assert!(
            unrelated.0.try_wait().unwrap().is_none(),
            "cleanup signalled a process it did not start"
        );
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
            owned_pid(&dir, "qemu.pid", "qemu-system"),
            Some(qemu.0.id() as i32)
        );
        assert_eq!(owned_pid(&dir, "swtpm.pid", "swtpm"), None);
        cleanup_in(&dir, "vm", &mut Default::default()).unwrap();
        assert!(qemu.0.wait().is_ok_and(|status| !status.success()));
        assert!(neighbour.0.try_wait().unwrap().is_none());
    }

    #[test]
    fn state_dirs_with_commas_are_refused() {
        let err = state_dir_under(Path::new("/tmp/x,file=/etc"), "vm").unwrap_err();
        assert!(err.to_string().contains("','"), "{err}");
        assert!(state_dir_under(Path::new("/tmp/x"), "vm").is_ok());
    }

    #[test]
    fn ak_is_not_taken_from_ports_another_process_holds() {
        // The attack: a local user binds the ports between their choice and swtpm's bind.
        let port = free_port_pair().unwrap();
        let _data = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let _ctrl = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
        assert_eq!(listeners_owned_by(port, std::process::id()), Some(true));
        let state = tempfile::tempdir().unwrap();
        let err = compute_ak_on(state.path(), port).unwrap_err();
        assert!(err.downcast_ref::<PortTaken>().is_some(), "{err:#}");
    }

    #[test]
    fn ak_is_derived_from_the_swtpm_started_here() {
        let state = tempfile::tempdir().unwrap();
        let ak = compute_ak(state.path()).unwrap();
        assert!(ak.len() > 64);
        // Same seed, same key.
        assert_eq!(compute_ak(state.path()).unwrap(), ak);
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
    fn snp_needs_qemu_9_1() {
        assert!(qemu_supports_snp("QEMU emulator version 9.1.0 (Debian)"));
        assert!(qemu_supports_snp(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2)"
        ));
        assert!(!qemu_supports_snp(
            "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7)"
        ));
        assert!(!qemu_supports_snp("QEMU emulator version 9.0.2"));
        assert!(!qemu_supports_snp(""));
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
}

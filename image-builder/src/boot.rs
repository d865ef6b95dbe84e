//! Boots a disk image under QEMU (q35, OVMF, no default devices) with swtpm as the TPM, and
//! collects the serial console. Used by the boot tests and by `cvm-cli deploy-local`.
//!
//! `-nodefaults` and an explicit `bootindex` matter for measurements: PCR 4 records every boot
//! option the firmware tries, so the disk must be the first and only one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// Where OVMF lives on Debian (`ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The controller the disk is attached to (the clouds' disks: virtio on QEMU and GCP, NVMe on AWS
/// and GCP, SCSI on GCP and Azure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    /// `virtio-blk-pci`.
    #[default]
    VirtioBlk,
    /// An emulated NVMe controller (`nvme`).
    Nvme,
    /// `virtio-scsi-pci` with a `scsi-hd` disk.
    VirtioScsi,
}

impl DiskBus {
    /// The QEMU `-device` arguments attaching drive `disk0` as the first boot option.
    pub fn qemu_args(self) -> Vec<String> {
        let devices: &[&str] = match self {
            DiskBus::VirtioBlk => &["virtio-blk-pci,drive=disk0,bootindex=0"],
            DiskBus::Nvme => &["nvme,serial=cvm-disk0,drive=disk0,bootindex=0"],
            DiskBus::VirtioScsi => &[
                "virtio-scsi-pci,id=scsi0",
                "scsi-hd,bus=scsi0.0,drive=disk0,bootindex=0",
            ],
        };
        devices
            .iter()
            .flat_map(|d| ["-device".to_string(), d.to_string()])
            .collect()
    }
}

impl std::str::FromStr for DiskBus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "virtio-blk" => Ok(DiskBus::VirtioBlk),
            "nvme" => Ok(DiskBus::Nvme),
            "virtio-scsi" => Ok(DiskBus::VirtioScsi),
            _ => Err(format!(
                "unknown disk bus {s} (virtio-blk|nvme|virtio-scsi)"
            )),
        }
    }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub disk: PathBuf,
    /// The disk's controller.
    pub disk_bus: DiskBus,
    pub ovmf_code: PathBuf,
    /// Template copied per boot (the firmware writes its variables).
    pub ovmf_vars: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Acceleration: `tcg` here, `kvm` where it works.
    pub accel: String,
    /// QEMU CPU model (`-cpu`); `None`: QEMU's default.
    pub cpu: Option<String>,
    /// Hard limit; the VM is killed after it.
    pub timeout: Duration,
    /// Boot the disk with `snapshot=on` (the image file is never written).
    pub snapshot: bool,
    /// More QEMU arguments (e.g. a NIC with port forwards for deploy-local).
    pub extra_args: Vec<String>,
    /// Launch as an SEV-SNP guest (KVM on an SNP host, QEMU 9.1 or later).
    pub snp: Option<SnpLaunch>,
}

/// How an SEV-SNP guest is launched: OVMF as its one firmware image and the UKI booted directly
/// with `kernel-hashes=on`, so the launch digest covers both (the UKI carries the initrd, the
/// command line and with it the dm-verity root hash).
#[derive(Debug, Clone)]
pub struct SnpLaunch {
    /// OVMF with SEV-SNP metadata and the SNP_KERNEL_HASHES section (edk2's AmdSevX64 build).
    pub ovmf: PathBuf,
    pub uki: PathBuf,
    /// The C-bit position and physical address bits lost to encryption (host CPUID 0x8000001F).
    pub cbitpos: u32,
    pub reduced_phys_bits: u32,
}

impl SnpLaunch {
    /// The QEMU arguments that make the guest an SNP guest.
    pub fn qemu_args(&self, memory_mib: u32) -> Vec<String> {
        vec![
            "-machine".into(),
            "q35,confidential-guest-support=sev0,memory-backend=ram0".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=ram0,size={memory_mib}M,share=true,prealloc=false"),
            "-object".into(),
            format!(
                "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},kernel-hashes=on",
                self.cbitpos, self.reduced_phys_bits
            ),
            "-bios".into(),
            self.ovmf.display().to_string(),
            "-kernel".into(),
            self.uki.display().to_string(),
        ]
    }
}

impl BootConfig {
    pub fn new(disk: impl Into<PathBuf>) -> Self {
        Self {
            disk: disk.into(),
            disk_bus: DiskBus::default(),
            ovmf_code: OVMF_CODE.into(),
            ovmf_vars: OVMF_VARS.into(),
            memory_mib: 1024,
            cpus: 1,
            accel: "tcg".into(),
            cpu: None,
            timeout: Duration::from_secs(600),
            snapshot: true,
            extra_args: Vec::new(),
            snp: None,
        }
    }
}

/// The result of a boot.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// Everything the guest wrote to its serial console.
    pub serial: String,
    /// QEMU exited on its own (guest power-off, or a panic with `-no-reboot`), not by timeout or
    /// by the `stop` predicate.
    pub exited: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Kills and reaps a child process when dropped (also when a test panics).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running swtpm on a private unix socket, stopped on drop.
pub struct Swtpm {
    _child: Reaped,
    pub socket: PathBuf,
}

impl Swtpm {
    /// Starts swtpm (TPM 2.0) with state in `dir`; waits until its control socket exists.
    pub fn start(dir: &Path) -> Result<Swtpm> {
        let state = dir.join("tpm-state");
        std::fs::create_dir_all(&state).ctx("creating swtpm state dir", &state)?;
        let socket = dir.join("swtpm.sock");
        // swtpm splits option values at commas and has no escape for them.
        if dir.to_string_lossy().contains(',') {
            return Err(Error::Tool {
                tool: "swtpm".into(),
                detail: format!(
                    "directory {} contains ',', which swtpm cannot take in an option value \
                     (set TMPDIR to a directory without commas)",
                    dir.display()
                ),
            });
        }
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate"])
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Tool {
                tool: "swtpm".into(),
                detail: format!("cannot start: {e}"),
            })?;
        let mut child = Reaped(child);
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Err(Error::Tool {
                    tool: "swtpm".into(),
                    detail: format!("exited early: {status}"),
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(Error::Tool {
                    tool: "swtpm".into(),
                    detail: "no control socket after 10 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Swtpm {
            _child: child,
            socket,
        })
    }
}

/// `value` for a QEMU option list (`key=value,key=value`): QEMU reads `,,` as a literal comma,
/// so a comma in a path cannot end the value and start an option of its own.
pub fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The QEMU command line for `cfg`, with serial output to `serial` and the TPM at `tpm_socket`.
pub fn qemu_command(cfg: &BootConfig, vars: &Path, serial: &Path, tpm_socket: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match &cfg.snp {
        // An SNP guest has one firmware image and no writable variable store.
        Some(snp) => {
            c.args(snp.qemu_args(cfg.memory_mib));
        }
        None => {
            c.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    qemu_escape(&cfg.ovmf_code.display().to_string())
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    qemu_escape(&vars.display().to_string())
                ));
        }
    }
    if let Some(cpu) = &cfg.cpu {
        c.args(["-cpu", cpu]);
    }
    c.args(["-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-accel")
        .arg(&cfg.accel)
        .arg("-m")
        .arg(cfg.memory_mib.to_string())
        .arg("-smp")
        .arg(cfg.cpus.to_string())
        .arg("-chardev")
        .arg(format!(
            "socket,id=chrtpm,path={}",
            qemu_escape(&tpm_socket.display().to_string())
        ))
        .args([
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ])
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk0,format=raw,file={}{}",
            qemu_escape(&cfg.disk.display().to_string()),
            if cfg.snapshot { ",snapshot=on" } else { "" }
        ))
        .args(cfg.disk_bus.qemu_args())
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(&cfg.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Boots `cfg.disk` until QEMU exits, `stop(serial_so_far)` returns true, or the timeout.
pub fn boot(cfg: &BootConfig, stop: impl Fn(&str) -> bool) -> Result<BootOutcome> {
    let dir = tempfile::tempdir().ctx("creating boot dir", std::env::temp_dir())?;
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(&cfg.ovmf_vars, &vars).ctx("copying OVMF variables", &cfg.ovmf_vars)?;
    let serial = dir.path().join("serial.log");
    let tpm = Swtpm::start(dir.path())?;
    let start = Instant::now();
    let child = qemu_command(cfg, &vars, &serial, &tpm.socket)
        .spawn()
        .map_err(|e| Error::Tool {
            tool: "qemu-system-x86_64".into(),
            detail: format!("cannot start: {e}"),
        })?;
    let mut qemu = Reaped(child);
    let read_serial = || {
        std::fs::read(&serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let (mut exited, mut timed_out) = (false, false);
    loop {
        if let Some(status) = qemu.0.try_wait().ctx("waiting for qemu", &cfg.disk)? {
            exited = true;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = qemu.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if !err.trim().is_empty() && read_serial().is_empty() {
                    return Err(Error::Boot(format!(
                        "qemu failed ({status}): {}",
                        err.trim()
                    )));
                }
            }
            break;
        }
        if stop(&read_serial()) {
            break;
        }
        if start.elapsed() > cfg.timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(qemu);
    Ok(BootOutcome {
        serial: read_serial(),
        exited,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Values of `CVM-PCR <n> <hex>` lines the tiny image's init prints.
pub fn parse_pcr_lines(serial: &str) -> std::collections::BTreeMap<String, String> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("CVM-PCR ")? + 8..];
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod option_tests {
    use super::*;

    #[test]
    fn commas_in_paths_cannot_add_qemu_options() {
        let mut cfg = BootConfig::new("/img/a,file=/etc/shadow,b/disk.raw");
        cfg.ovmf_code = "/fw/code,readonly=off".into();
        let command = qemu_command(
            &cfg,
            Path::new("/s,x/vars"),
            Path::new("/s/serial,1"),
            Path::new("/s,server=on/tpm"),
        );
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(
            &"if=none,id=disk0,format=raw,file=/img/a,,file=/etc/shadow,,b/disk.raw,snapshot=on"
                .to_string()
        ));
        assert!(args.contains(
            &"if=pflash,format=raw,unit=0,readonly=on,file=/fw/code,,readonly=off".to_string()
        ));
        assert!(args.contains(&"if=pflash,format=raw,unit=1,file=/s,,x/vars".to_string()));
        assert!(args.contains(&"socket,id=chrtpm,path=/s,,server=on/tpm".to_string()));
        // `-serial file:PATH` takes the rest of the string as the path: no escaping there.
        assert!(args.contains(&"file:/s/serial,1".to_string()));
    }

    #[test]
    fn swtpm_refuses_a_directory_with_a_comma() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a,server=tcp");
        std::fs::create_dir_all(&dir).unwrap();
        let err = Swtpm::start(&dir).err().expect("refused").to_string();
        assert!(err.contains("','"), "{err}");
    }
}

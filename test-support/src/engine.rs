//! Real container engines behind the Docker Engine API: Debian's `dockerd` and Podman's
//! Docker-compatible service, each private to a test with its own local registry.

use crate::process::Daemon;
use crate::registry::Registry;
use anyhow::{Context, Result};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// Which engine serves the Docker Engine API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Debian's `docker.io` dockerd.
    Docker,
    /// `podman system service` with runc.
    Podman,
}

impl EngineKind {
    /// Both engines, for tests that must pass on each.
    pub const ALL: [EngineKind; 2] = [EngineKind::Docker, EngineKind::Podman];
}

/// A running engine on a private Unix socket, with a loopback registry it trusts.
/// Field order is drop order: the engine stops before its registry and its directory go.
pub struct ContainerEngine {
    kind: EngineKind,
    daemon: Option<Daemon>,
    socket: PathBuf,
    podman: Option<PodmanConfig>,
    registry: Registry,
    dir: TempDir,
}

/// How to run a `podman` command against the same storage and configuration as the service.
struct PodmanConfig {
    args: Vec<String>,
    env: Vec<(&'static str, PathBuf)>,
}

impl ContainerEngine {
    /// Starts the engine (and a registry for it); ready when its API answers `_ping`.
    pub fn start(kind: EngineKind) -> Result<Self> {
        let registry = Registry::start()?;
        let dir = tempfile::Builder::new().prefix("engine-").tempdir()?;
        let socket = dir.path().join("api.sock");
        let log = dir.path().join("engine.log");
        let (command, podman) = match kind {
            EngineKind::Docker => (docker_command(dir.path(), &socket)?, None),
            EngineKind::Podman => {
                let config = podman_config(dir.path(), &registry)?;
                (podman_service_command(&config, &socket)?, Some(config))
            }
        };
        let name = format!("{kind:?} engine");
        let mut daemon = Daemon::spawn(&name, command, &log, Duration::from_secs(30))?;
        daemon
            .wait_ready(Duration::from_secs(60), || ping(&socket))
            .with_context(|| format!("waiting for the {kind:?} API on {}", socket.display()))?;
        Ok(Self {
            kind,
            daemon: Some(daemon),
            socket,
            podman,
            registry,
            dir,
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A `bollard` client for the engine's socket.
    pub fn client(&self) -> Result<bollard::Docker> {
        let path = self.socket.to_str().context("socket path is not UTF-8")?;
        Ok(bollard::Docker::connect_with_unix(
            path,
            120,
            bollard::API_DEFAULT_VERSION,
        )?)
    }

    /// The registry this engine can push to and pull from without TLS.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The end of the engine's log, for diagnosing a failed test.
    pub fn log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }
}

impl Drop for ContainerEngine {
    fn drop(&mut self) {
        if let Some(podman) = &self.podman {
            // Podman's containers outlive its API service (conmon is detached): remove them first.
            let _ = Command::new("podman")
                .envs(podman.env.iter().map(|(k, v)| (*k, v)))
                .args(&podman.args)
                .args(["rm", "--all", "--force", "--time", "0"])
                .output();
        }
        // dockerd leaves the bridge of every network it created in the host's network namespace;
        // enough of them exhaust its address pools for every later test on the machine.
        let bridges = match self.kind {
            EngineKind::Docker => docker_bridges(&self.socket),
            EngineKind::Podman => Vec::new(),
        };
        drop(self.daemon.take());
        for bridge in bridges {
            let _ = Command::new("ip")
                .args(["link", "delete", &bridge])
                .output();
        }
        // Whatever the engine left mounted (container shm) would keep the directory alive.
        unmount_below(self.dir.path());
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        if let Ok(c_path) = std::ffi::CString::new(point) {
            // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
            unsafe {
                libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn ping(socket: &Path) -> bool {
    get(socket, "/_ping").is_some()
}

/// `GET path` over the API socket (HTTP/1.0, so the body ends at EOF); the body of a 200 answer.
fn get(socket: &Path, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = Vec::new();
    stream.take(1 << 20).read_to_end(&mut answer).ok()?;
    let ok = answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200");
    let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    ok.then(|| answer.split_off(body_at))
}

/// The host interfaces of the bridge networks a dockerd created (`br-` + 12 hex of the ID).
fn docker_bridges(socket: &Path) -> Vec<String> {
    let Some(body) = get(socket, "/networks") else {
        return Vec::new();
    };
    let Ok(networks) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return Vec::new();
    };
    networks
        .iter()
        .filter(|network| network["Driver"] == "bridge" && network["Name"] != "bridge")
        .filter_map(|network| network["Id"].as_str())
        .filter(|id| id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|id| format!("br-{}", &id[..12]))
        .collect()
}

/// dockerd as root with no host networking changes, its own containerd, and the vfs driver (no
/// overlay mounts to leak).
fn docker_command(dir: &Path, socket: &Path) -> Result<Command> {
    let binary = crate::require_tool("dockerd")?;
    let config = dir.join("daemon.json");
    std::fs::write(&config, "{}")?;
    let mut command = Command::new(binary);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--storage-driver=vfs",
            "--userland-proxy=false",
            // Not the default pools (31 networks in all): bridges of concurrent engines, and any
            // left by a killed test, would soon exhaust them.
            "--default-address-pool",
            "base=10.160.0.0/11,size=24",
        ]);
    Ok(command)
}

/// The hard limit of a resource for this process: Podman's defaults exceed it here, and runc then
/// fails to set the limit in the container.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0
        || limit.rlim_max == libc::RLIM_INFINITY
    {
        return 1 << 20;
    }
    limit.rlim_max
}

fn pid_max() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(32768)
}

/// Podman with the settings this machine needs: runc (crun fails on the hybrid cgroups),
/// cgroupfs, file events, ulimits within the hard limit, vfs storage, and the test registry
/// marked insecure. Storage and state stay inside `dir`.
fn podman_config(dir: &Path, registry: &Registry) -> Result<PodmanConfig> {
    let conf = dir.join("containers.conf");
    let (nofile, nproc) = (
        hard_limit(libc::RLIMIT_NOFILE),
        // runc fails to set an nproc limit above pid_max here, although the hard limit is higher.
        hard_limit(libc::RLIMIT_NPROC).min(pid_max()),
    );
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        ),
    )?;
    let registries = dir.join("registries.conf");
    std::fs::write(
        &registries,
        format!(
            "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            registry.host()
        ),
    )?;
    let path = |name: &str| dir.join(name).display().to_string();
    let args = vec![
        "--root".into(),
        path("root"),
        "--runroot".into(),
        path("runroot"),
        "--tmpdir".into(),
        path("tmp"),
        "--storage-driver".into(),
        "vfs".into(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
        "--events-backend".into(),
        "file".into(),
        "--runtime".into(),
        "runc".into(),
    ];
    Ok(PodmanConfig {
        args,
        env: vec![
            ("CONTAINERS_CONF", conf),
            ("CONTAINERS_REGISTRIES_CONF", registries),
        ],
    })
}

fn podman_service_command(config: &PodmanConfig, socket: &Path) -> Result<Command> {
    let mut command = Command::new(crate::require_tool("podman")?);
    command
        .envs(config.env.iter().map(|(k, v)| (*k, v)))
        .args(&config.args)
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()));
    Ok(command)
}

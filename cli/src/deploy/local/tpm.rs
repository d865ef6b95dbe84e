//! The software TPM's attestation key, derived on the new TPM before any guest runs: the key
//! `verify --trusted-ak` pins for a local VM.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The agent's AK on the TPM at `tcti`: the same template gives the same primary key.
pub fn derive_ak(tcti: &str) -> Result<Vec<u8>> {
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
pub fn compute_ak(state: &Path) -> Result<Vec<u8>> {
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
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PortTaken(String);

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
}

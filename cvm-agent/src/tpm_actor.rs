//! The TPM is one device: a dedicated thread owns it and serves requests one at a time from a
//! queue. No request holds a TPM session beyond its own command, and async handlers never block.
//!
//! Evidence requests are bounded: at most `tpm_queue_capacity` wait or run at once (one more gets
//! [`TpmBusy`], which the API answers 503 with Retry-After), and one whose caller has left (client
//! gone, request timed out) is skipped rather than quoted. Extends and PCR reads are never
//! bounded or skipped: the log must explain PCR 23.

use anyhow::{anyhow, Context, Result};
use cvm_attestation::evidence::{Cloud, Evidence, Platform, Tee};
use cvm_attestation::workload::{WorkloadEvent, WorkloadLog, WORKLOAD_PCR};
use cvm_attester::tpm::AZURE_AK_HANDLE;
use cvm_attester::{collect, AttestationKey, CollectRequest, TeeBackend, Tpm};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::{oneshot, Semaphore};

/// Where Linux exposes the TDX CC event log (the ACPI CCEL table's log area).
const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// Extends TDX RTMR3 through the kernel's sysfs attribute (Linux 6.16+,
/// `/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384`): one write of exactly the
/// 48-byte digest at offset 0; the kernel makes it `TDG.MR.RTMR.EXTEND`, so RTMR3 becomes
/// SHA-384(RTMR3 || digest). A short or failed write is an error.
pub fn extend_rtmr3(path: &Path, digest: &[u8; 48]) -> std::io::Result<()> {
    let mut attribute = std::fs::OpenOptions::new().write(true).open(path)?;
    let written = attribute.write(digest)?;
    if written != digest.len() {
        return Err(std::io::Error::other(format!(
            "wrote {written} of {} bytes",
            digest.len()
        )));
    }
    Ok(())
}

/// The RTMR3 attribute to extend on this platform, if any: TDX outside Azure (whose quote is
/// made at boot by the paravisor and cannot show later extensions), when the kernel offers it.
fn rtmr3_interface(platform: Platform, path: &Path) -> Option<PathBuf> {
    if platform.tee != Tee::Tdx || platform.cloud == Cloud::Azure {
        return None;
    }
    if path.exists() {
        tracing::info!(path = %path.display(), "the workload is also extended into RTMR3");
        Some(path.to_owned())
    } else {
        tracing::warn!(
            path = %path.display(),
            "this TD's kernel offers no RTMR extension to user space (Linux < 6.16): \
             the workload is measured into the vTPM's PCR 23 alone"
        );
        None
    }
}

/// What [`TpmActor::extend_workload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extended {
    /// PCR 23 afterwards.
    pub pcr23: [u8; 32],
    /// TDX: why RTMR3 could not be extended after PCR 23 was (then RTMR3 no longer follows the
    /// log; the log must say so, `WorkloadLog::rtmr3_failure`).
    pub rtmr3_failure: Option<String>,
}

type Job = Box<dyn FnOnce(&mut Owned) + Send>;

struct Owned {
    tpm: Tpm,
    ak: AttestationKey,
    /// GCP: Google's certificate for `ak`.
    ak_cert: Option<Vec<u8>>,
    tee: Box<dyn TeeBackend>,
    firmware_log: Option<std::path::PathBuf>,
    /// AWS: ask the NitroTPM for an AWS-signed attestation document with every evidence.
    nitro: bool,
    /// TDX: the kernel's RTMR3 attribute, extended with every event after PCR 23 (cleared
    /// after a failure: RTMR3 cannot follow the log any more).
    rtmr3: Option<PathBuf>,
}

/// The AK a verifier can trust on this platform: on GCP the one Google certified (created from
/// the template Google provisioned), elsewhere our own restricted key (persistent at Azure's
/// handle, where the paravisor's AK lives).
fn attestation_key(tpm: &mut Tpm, platform: Platform) -> Result<(AttestationKey, Option<Vec<u8>>)> {
    if platform.cloud == Cloud::Gcp {
        let (ak, cert) = cvm_attester::gce::gce_attestation_key(tpm)
            .context("loading Google's certified attestation key")?;
        return Ok((ak, Some(cert)));
    }
    let ak = tpm
        .attestation_key(Some(AZURE_AK_HANDLE))
        .context("loading or creating the attestation key")?;
    Ok((ak, None))
}

/// Flushes transient objects a previous agent left loaded. Behind the kernel's resource manager
/// (`/dev/tpmrm0`) there are none to see; on a TPM without one (swtpm, a raw device) an agent
/// killed with SIGKILL leaves its AK loaded, and three such restarts exhaust the object slots
/// (TPM_RC_OBJECT_MEMORY) so no AK can be made. Best effort: a TPM that refuses is left as is.
fn flush_leftover_objects(tpm: &mut Tpm) {
    const TRANSIENT_FIRST: u32 = 0x8000_0000;
    // TPM2_GetCapability(TPM_CAP_HANDLES, TRANSIENT_FIRST, 64), no sessions.
    let mut command = vec![0x80, 0x01, 0, 0, 0, 22, 0, 0, 0x01, 0x7a, 0, 0, 0, 1];
    command.extend_from_slice(&TRANSIENT_FIRST.to_be_bytes());
    command.extend_from_slice(&64u32.to_be_bytes());
    let handles = match tpm.raw_command(&command) {
        // Header (10), moreData (1), capability (4), count (4), then the handles.
        Ok(response) if response.len() >= 19 && response[6..10] == [0; 4] => response[19..]
            .chunks_exact(4)
            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
            .filter(|handle| handle & 0xff00_0000 == TRANSIENT_FIRST)
            .collect::<Vec<_>>(),
        _ => return,
    };
    for handle in handles {
        // TPM2_FlushContext(handle).
        let mut flush = vec![0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65];
        flush.extend_from_slice(&handle.to_be_bytes());
        match tpm.raw_command(&flush) {
            Ok(response) if response[6..10] == [0; 4] => {
                tracing::warn!("flushed a transient TPM object an earlier run left: {handle:#x}")
            }
            _ => tracing::warn!("could not flush the leftover transient TPM object {handle:#x}"),
        }
    }
}

/// More evidence requests wait for the TPM than the agent queues.
#[derive(Debug, thiserror::Error)]
#[error("the TPM is busy: {0} evidence requests are waiting already; retry shortly")]
pub struct TpmBusy(pub usize);

/// Evidence requests queued or running at once, unless configured (`tpm_queue_capacity`).
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

/// A handle to the TPM thread; cheap to clone.
#[derive(Clone)]
pub struct TpmActor {
    jobs: mpsc::Sender<Job>,
    ak_public: Vec<u8>,
    /// Evidence documents made (quotes run) since start.
    quotes: Arc<AtomicU64>,
    /// Evidence requests skipped because their caller had left.
    skipped: Arc<AtomicU64>,
    /// One permit per evidence request queued or running.
    quote_slots: Arc<Semaphore>,
    capacity: usize,
}

impl TpmActor {
    /// Opens the TPM, loads or creates the AK, and starts the thread. `rtmr3_path` is the
    /// kernel's RTMR3 attribute, used on TDX when it exists.
    pub fn start(
        tcti: &str,
        platform: Platform,
        tee: Box<dyn TeeBackend>,
        firmware_log: Option<std::path::PathBuf>,
        rtmr3_path: &Path,
    ) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<u8>>>();
        let (jobs, queue) = mpsc::channel::<Job>();
        let tcti = tcti.to_owned();
        let rtmr3 = rtmr3_interface(platform, rtmr3_path);
        std::thread::Builder::new()
            .name("tpm".into())
            .spawn(move || {
                let opened = (|| -> Result<Owned> {
                    let mut tpm = Tpm::open(&tcti)?;
                    flush_leftover_objects(&mut tpm);
                    let (ak, ak_cert) = attestation_key(&mut tpm, platform)?;
                    Ok(Owned {
                        tpm,
                        ak,
                        ak_cert,
                        tee,
                        firmware_log,
                        nitro: platform.cloud == Cloud::Aws,
                        rtmr3,
                    })
                })();
                let mut owned = match opened {
                    Ok(owned) => {
                        let _ = ready_tx.send(Ok(owned.ak.public.clone()));
                        owned
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    job(&mut owned);
                }
            })
            .context("starting the TPM thread")?;
        let ak_public = ready_rx
            .recv()
            .map_err(|_| anyhow!("the TPM thread stopped during start-up"))??;
        Ok(Self {
            jobs,
            ak_public,
            quotes: Arc::default(),
            skipped: Arc::default(),
            quote_slots: Arc::new(Semaphore::new(DEFAULT_QUEUE_CAPACITY)),
            capacity: DEFAULT_QUEUE_CAPACITY,
        })
    }

    /// At most `capacity` evidence requests queued or running at once.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.quote_slots = Arc::new(Semaphore::new(capacity));
        self.capacity = capacity;
        self
    }

    /// How many evidence requests were skipped because their caller had left.
    pub fn quotes_skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// How many evidence documents (quotes) the TPM thread has made since start.
    pub fn quotes_made(&self) -> u64 {
        self.quotes.load(Ordering::Relaxed)
    }

    /// The AK's TPMT_PUBLIC.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// Runs `job` on the TPM thread, even if the caller leaves meanwhile.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Owned) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.submit(None, job).await
    }

    /// Queues `job`; with `skipped`, it is dropped unrun (and counted) when its caller has left
    /// by the time its turn comes.
    async fn submit<T: Send + 'static>(
        &self,
        skipped: Option<Arc<AtomicU64>>,
        job: impl FnOnce(&mut Owned) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |owned: &mut Owned| {
                if let (Some(skipped), true) = (skipped, tx.is_closed()) {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let _ = tx.send(job(owned));
            }))
            .map_err(|_| anyhow!("the TPM thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the TPM thread dropped a request"))?
    }

    pub async fn read_pcr23(&self) -> Result<[u8; 32]> {
        self.run(|o| Ok(o.tpm.read_sha256(&[WORKLOAD_PCR])?[0]))
            .await
    }

    /// Extends every event into PCR 23, in order, and on TDX (when the kernel offers it) each
    /// event's SHA-384 digest into RTMR3 right after it; returns PCR 23 afterwards. PCR 23 is
    /// always extended in full (the log must explain it); an RTMR3 failure is logged, stops
    /// further RTMR3 extensions and is returned for the log to carry.
    pub async fn extend_workload(&self, events: Vec<WorkloadEvent>) -> Result<Extended> {
        self.extend(events, false).await
    }

    /// [`Self::extend_workload`] for an update: the `extend` fail-point (debug builds) can kill
    /// the agent after the first event.
    pub async fn extend_update(&self, events: Vec<WorkloadEvent>) -> Result<Extended> {
        self.extend(events, true).await
    }

    async fn extend(&self, events: Vec<WorkloadEvent>, faults: bool) -> Result<Extended> {
        self.run(move |o| {
            let mut rtmr3_failure = None;
            for (index, event) in events.iter().enumerate() {
                o.tpm
                    .extend_sha256(WORKLOAD_PCR, &event.extend_digest().0)?;
                if faults && index == 0 {
                    crate::fault::point(crate::fault::Step::Extend);
                }
                let Some(path) = &o.rtmr3 else { continue };
                if let Err(e) = extend_rtmr3(path, &event.extend_digest_sha384().0) {
                    let failure = format!(
                        "extending RTMR3 through {} for {:?} event {:?}: {e}",
                        path.display(),
                        event.kind,
                        event.name
                    );
                    tracing::error!(
                        "{failure}: PCR 23 was extended, RTMR3 was not; RTMR3 no longer \
                         follows the workload log, the evidence says so and verifiers will \
                         fail workload.rtmr3"
                    );
                    rtmr3_failure = Some(failure);
                    o.rtmr3 = None;
                }
            }
            Ok(Extended {
                pcr23: o.tpm.read_sha256(&[WORKLOAD_PCR])?[0],
                rtmr3_failure,
            })
        })
        .await
    }

    /// Evidence over `nonce` (bound with the agent's TLS key when it has one). [`TpmBusy`] when
    /// the queue is full.
    pub async fn evidence(
        &self,
        platform: Platform,
        nonce: Vec<u8>,
        tls_spki_sha256: Option<[u8; 32]>,
        workload_log: WorkloadLog,
    ) -> Result<Evidence> {
        let slot = Arc::clone(&self.quote_slots)
            .try_acquire_owned()
            .map_err(|_| TpmBusy(self.capacity))?;
        let quotes = Arc::clone(&self.quotes);
        let skipped = Some(Arc::clone(&self.skipped));
        self.submit(skipped, move |o| {
            let _slot = slot;
            quotes.fetch_add(1, Ordering::Relaxed);
            let Owned {
                tpm,
                ak,
                ak_cert,
                tee,
                firmware_log,
                nitro,
                rtmr3: _,
            } = o;
            Ok(collect(
                tpm,
                ak,
                tee.as_mut(),
                CollectRequest {
                    platform,
                    nonce: &nonce,
                    tls_spki_sha256,
                    workload_log: Some(workload_log),
                    firmware_log: firmware_log
                        .as_ref()
                        .and_then(|path| std::fs::read(path).ok()),
                    ccel: (platform.tee == cvm_attestation::evidence::Tee::Tdx)
                        .then(|| std::fs::read(CCEL_PATH).ok())
                        .flatten(),
                    ak_cert: ak_cert.clone(),
                    nitro_document: *nitro,
                },
            )?)
        })
        .await
    }
}

/// No TDX hardware is available here: these tests stand in a regular file (one extension) and a
/// FIFO (every extension, in order) for the kernel's `rtmr3:sha384` attribute, and a directory
/// for an attribute whose writes fail. The real kernel extends instead of storing.
#[cfg(test)]
mod tests {
    use super::*;
    use cvm_attestation::workload::log::{extend_sha384, replay_sha384};
    use cvm_attestation::workload::EventKind;
    use cvm_attestation::Sha384Digest;
    use std::io::Read as _;

    fn events() -> Vec<WorkloadEvent> {
        vec![
            WorkloadEvent::over(
                EventKind::ComposeFile,
                "docker-compose.yml",
                b"services: {}",
            ),
            WorkloadEvent::over(EventKind::ConfigFile, "config/a", b"a"),
            WorkloadEvent::separator(),
        ]
    }

    #[test]
    fn extend_rtmr3_writes_the_48_byte_digest_at_offset_0_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let attribute = dir.path().join("rtmr3:sha384");
        std::fs::write(&attribute, [0u8; 48]).unwrap(); // sysfs shows the 48-byte register
        let digest = events()[0].extend_digest_sha384().0;
        extend_rtmr3(&attribute, &digest).unwrap();
        assert_eq!(std::fs::read(&attribute).unwrap(), digest);

        // A kernel without the interface, or an attribute that refuses the write.
        let missing = extend_rtmr3(&dir.path().join("absent"), &digest).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert!(extend_rtmr3(dir.path(), &digest).is_err());
    }

    #[test]
    fn only_tdx_outside_azure_with_the_attribute_extends_rtmr3() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let platform = |cloud, tee| Platform { cloud, tee };
        let gcp_tdx = platform(Cloud::Gcp, Tee::Tdx);
        assert!(rtmr3_interface(gcp_tdx, file.path()).is_some());
        assert!(rtmr3_interface(gcp_tdx, Path::new("/nonexistent/rtmr3:sha384")).is_none());
        assert!(rtmr3_interface(platform(Cloud::Azure, Tee::Tdx), file.path()).is_none());
        assert!(rtmr3_interface(platform(Cloud::Gcp, Tee::SevSnp), file.path()).is_none());
    }

    fn actor(swtpm: &test_support::Swtpm, rtmr3: &Path) -> TpmActor {
        let platform = Platform {
            cloud: Cloud::Qemu,
            tee: Tee::Tdx,
        };
        let tee = Box::new(cvm_attester::NoTee);
        TpmActor::start(&swtpm.tcti(), platform, tee, None, rtmr3).unwrap()
    }

    /// An actor without a TEE, as on a plain QEMU VM.
    fn plain_actor(swtpm: &test_support::Swtpm) -> TpmActor {
        let platform = Platform {
            cloud: Cloud::Qemu,
            tee: Tee::None,
        };
        let tee = Box::new(cvm_attester::NoTee);
        TpmActor::start(
            &swtpm.tcti(),
            platform,
            tee,
            None,
            Path::new("/nonexistent"),
        )
        .unwrap()
    }

    /// Holds the TPM thread for `time`, so requests queue behind it.
    fn hold(tpm: &TpmActor, time: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let tpm = tpm.clone();
        tokio::spawn(async move {
            tpm.run(move |_| {
                std::thread::sleep(time);
                Ok(())
            })
            .await
            .unwrap();
        })
    }

    fn request_evidence(tpm: &TpmActor) -> tokio::task::JoinHandle<Result<Evidence>> {
        let tpm = tpm.clone();
        let platform = Platform {
            cloud: Cloud::Qemu,
            tee: Tee::None,
        };
        tokio::spawn(async move {
            let log = WorkloadLog::from_events(events());
            tpm.evidence(platform, vec![7; 16], None, log).await
        })
    }

    /// Callers that left (a client gone, a request timed out) cost no quote; extends queued
    /// behind them still run.
    #[tokio::test]
    async fn evidence_requests_whose_caller_left_are_skipped_but_extends_are_not() {
        let swtpm = test_support::Swtpm::start().unwrap();
        let tpm = plain_actor(&swtpm);
        let held = hold(&tpm, std::time::Duration::from_millis(500));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let abandoned: Vec<_> = (0..20).map(|_| request_evidence(&tpm)).collect();
        let extend = {
            let tpm = tpm.clone();
            tokio::spawn(async move { tpm.extend_workload(events()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for request in &abandoned {
            request.abort();
        }
        extend.abort(); // an extend is never skipped, even when its caller left
        held.await.unwrap();
        let pcr = tpm.read_pcr23().await.unwrap();
        assert_eq!(pcr, WorkloadLog::from_events(events()).replay().0);
        assert_eq!(tpm.quotes_made(), 0, "abandoned requests made quotes");
        assert_eq!(tpm.quotes_skipped(), 20);
        // A caller who waits gets its evidence.
        request_evidence(&tpm).await.unwrap().unwrap();
        assert_eq!(tpm.quotes_made(), 1);
    }

    /// A full queue answers at once; its slots come back when requests are done.
    #[tokio::test]
    async fn a_full_evidence_queue_refuses_at_once() {
        let swtpm = test_support::Swtpm::start().unwrap();
        let tpm = plain_actor(&swtpm).with_queue_capacity(2);
        let held = hold(&tpm, std::time::Duration::from_millis(300));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let queued = [request_evidence(&tpm), request_evidence(&tpm)];
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = request_evidence(&tpm).await.unwrap().unwrap_err();
        assert!(refused.is::<TpmBusy>(), "{refused:#}");
        held.await.unwrap();
        for request in queued {
            request.await.unwrap().unwrap();
        }
        request_evidence(&tpm).await.unwrap().unwrap();
        assert_eq!(tpm.quotes_made(), 3);
    }

    #[tokio::test]
    async fn extend_workload_extends_rtmr3_after_pcr23_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rtmr3:sha384");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let events = events();
        let expected = 48 * events.len();
        // Every write to the FIFO, in order (writes may arrive in one read session or several).
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                while written.len() < expected {
                    let mut session = std::fs::File::open(&fifo).unwrap();
                    session.read_to_end(&mut written).unwrap();
                }
                written
            })
        };
        let swtpm = test_support::Swtpm::start().unwrap();
        let tpm = actor(&swtpm, &fifo);
        let extended = tpm.extend_workload(events.clone()).await.unwrap();
        let log = WorkloadLog::from_events(events.clone());
        assert_eq!(extended.rtmr3_failure, None);
        assert_eq!(extended.pcr23, log.replay().0);

        let written = reader.join().unwrap();
        let digests: Vec<[u8; 48]> = written
            .chunks(48)
            .map(|chunk| chunk.try_into().unwrap())
            .collect();
        let wanted: Vec<[u8; 48]> = events.iter().map(|e| e.extend_digest_sha384().0).collect();
        assert_eq!(digests, wanted);
        // What the TDX module would hold: the log's SHA-384 replay.
        let rtmr3 = digests.iter().fold(Sha384Digest::default(), |rtmr, d| {
            extend_sha384(&rtmr, &Sha384Digest(*d))
        });
        assert_eq!(rtmr3, replay_sha384(&events));
        assert_eq!(rtmr3, log.replay_sha384());
    }

    #[tokio::test]
    async fn a_failed_rtmr3_extension_is_reported_and_pcr23_is_still_extended_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let swtpm = test_support::Swtpm::start().unwrap();
        // A directory exists but refuses writes, like an attribute whose write fails.
        let tpm = actor(&swtpm, dir.path());
        let events = events();
        let extended = tpm.extend_workload(events.clone()).await.unwrap();
        assert_eq!(
            extended.pcr23,
            WorkloadLog::from_events(events.clone()).replay().0
        );
        let failure = extended.rtmr3_failure.expect("the failure is reported");
        assert!(failure.contains("extending RTMR3"), "{failure}");
        assert!(failure.contains("docker-compose.yml"), "{failure}");
        // No further attempt after a failure: RTMR3 cannot follow the log any more.
        let again = tpm.extend_workload(events).await.unwrap();
        assert_eq!(again.rtmr3_failure, None);
    }
}

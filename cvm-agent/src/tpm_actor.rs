//! The TPM is one device: a dedicated thread owns it and serves requests one at a time from a
//! queue. No request holds a TPM session beyond its own command, and async handlers never block.

use anyhow::{anyhow, Context, Result};
use cvm_attestation::evidence::{Cloud, Evidence, Platform};
use cvm_attestation::workload::{WorkloadEvent, WorkloadLog, WORKLOAD_PCR};
use cvm_attester::tpm::AZURE_AK_HANDLE;
use cvm_attester::{collect, AttestationKey, CollectRequest, TeeBackend, Tpm};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Where Linux exposes the TDX CC event log (the ACPI CCEL table's log area).
const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";

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

/// A handle to the TPM thread; cheap to clone.
#[derive(Clone)]
pub struct TpmActor {
    jobs: mpsc::Sender<Job>,
    ak_public: Vec<u8>,
}

impl TpmActor {
    /// Opens the TPM, loads or creates the AK, and starts the thread.
    pub fn start(
        tcti: &str,
        platform: Platform,
        tee: Box<dyn TeeBackend>,
        firmware_log: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<u8>>>();
        let (jobs, queue) = mpsc::channel::<Job>();
        let tcti = tcti.to_owned();
        std::thread::Builder::new()
            .name("tpm".into())
            .spawn(move || {
                let opened = (|| -> Result<Owned> {
                    let mut tpm = Tpm::open(&tcti)?;
                    let (ak, ak_cert) = attestation_key(&mut tpm, platform)?;
                    Ok(Owned {
                        tpm,
                        ak,
                        ak_cert,
                        tee,
                        firmware_log,
                        nitro: platform.cloud == Cloud::Aws,
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
        Ok(Self { jobs, ak_public })
    }

    /// The AK's TPMT_PUBLIC.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Owned) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |owned: &mut Owned| {
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

    /// Extends every event into PCR 23, in order, and returns the PCR value afterwards.
    pub async fn extend_workload(&self, events: Vec<WorkloadEvent>) -> Result<[u8; 32]> {
        self.run(move |o| {
            for event in &events {
                o.tpm
                    .extend_sha256(WORKLOAD_PCR, &event.extend_digest().0)?;
            }
            Ok(o.tpm.read_sha256(&[WORKLOAD_PCR])?[0])
        })
        .await
    }

    /// Evidence over `nonce` (bound with the agent's TLS key when it has one).
    pub async fn evidence(
        &self,
        platform: Platform,
        nonce: Vec<u8>,
        tls_spki_sha256: Option<[u8; 32]>,
        workload_log: WorkloadLog,
    ) -> Result<Evidence> {
        self.run(move |o| {
            let Owned {
                tpm,
                ak,
                ak_cert,
                tee,
                firmware_log,
                nitro,
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

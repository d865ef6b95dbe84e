//! The workload measurement computed offline from the example workload, extended into a real
//! swtpm, gives the PCR 23 value that replaying its event log predicts.

use cvm_attestation::workload::{WorkloadFolder, WorkloadLog, WORKLOAD_PCR};
use cvm_attester::Tpm;
use std::collections::BTreeMap;
use std::path::Path;
use test_support::{busybox_image_archive, Swtpm};

#[test]
fn example_workload_measures_into_pcr23_as_replayed() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    let folder = WorkloadFolder::read(&root)?;
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[])?;
    let ids = BTreeMap::from([(archive.tag.clone(), archive.image_id.clone())]);
    let events = folder.events(&ids, None)?;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker-compose.yml",
            "config/message.txt",
            "app.env",
            "README.md",
            "${CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}",
            "localhost/cvm-example/hello:1",
            ""
        ]
    );
    let log = WorkloadLog::from_events(events);

    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    for event in &log.events {
        tpm.extend_sha256(WORKLOAD_PCR, &event.extend_digest().0)?;
    }
    let pcr = tpm.read_sha256(&[WORKLOAD_PCR])?[0];
    assert_eq!(hex::encode(pcr), log.replay().to_hex());
    Ok(())
}

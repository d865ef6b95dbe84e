//! A workload upload (zip or tar) as the agent takes it: unpacked into a fresh directory with the
//! agent's limits, then read and measured as a workload folder.
#![no_main]
use cvm_attestation::workload::WorkloadFolder;
use cvm_fuzz::archive::{unpack, Limits};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

/// The agent's limits for an upload of at most 64 KiB (`-max_len`).
const LIMITS: Limits = Limits {
    max_entries: 10_000,
    max_total_bytes: 4 * 65_536,
};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("staging");
    if unpack(data, &root, LIMITS).is_err() {
        return;
    }
    let Ok(folder) = WorkloadFolder::read(&root) else {
        return;
    };
    let ids: BTreeMap<String, String> = folder
        .image_references()
        .into_iter()
        .map(|r| (r, format!("sha256:{}", "ab".repeat(32))))
        .collect();
    let _ = folder.events(&ids, None);
});

//! The workload's compose file, as the agent validates and measures it: services, images, host
//! mounts, and the image-pinned rewrite.
#![no_main]
use cvm_attestation::workload::Compose;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(compose) = Compose::parse(data) else {
        return;
    };
    let _ = compose.images();
    let _ = compose.host_mounts();
    if let Ok(services) = compose.services() {
        let pinned: BTreeMap<String, String> = services
            .iter()
            .map(|s| {
                (
                    s.image.clone(),
                    format!("{}@sha256:{}", s.image, "00".repeat(32)),
                )
            })
            .collect();
        let _ = compose.with_images(&pinned);
    }
});

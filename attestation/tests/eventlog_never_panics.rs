//! The TCG2 event log parser never panics: random bytes, and random events behind a valid
//! Spec ID header (so the event parser itself is exercised, not only the header check).

use cvm_attestation::eventlog::TcgLog;
use cvm_attestation::tpm::HashAlg;
use proptest::prelude::*;

/// Event 0 with a Spec ID event listing SHA-256 and SHA-384.
fn header() -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
    spec.extend_from_slice(&2u32.to_le_bytes());
    for (alg, size) in [(0x000bu16, 32u16), (0x000c, 48)] {
        spec.extend_from_slice(&alg.to_le_bytes());
        spec.extend_from_slice(&size.to_le_bytes());
    }
    spec.push(0);
    let mut log = Vec::new();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&3u32.to_le_bytes());
    log.extend_from_slice(&[0; 20]);
    log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec);
    log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_logs(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = TcgLog::parse(&bytes);
        let mut log = header();
        log.extend_from_slice(&bytes);
        if let Ok(parsed) = TcgLog::parse(&log) {
            let _ = parsed.replay(HashAlg::Sha256);
            let _ = parsed.replay(HashAlg::Sha384);
        }
    }

    #[test]
    fn well_formed_events_with_random_fields(
        index in 0u32..32, kind in any::<u32>(), count in 0u32..4, alg in prop_oneof![Just(0x000bu16), Just(0x000c), any::<u16>()],
        size in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut log = header();
        log.extend_from_slice(&index.to_le_bytes());
        log.extend_from_slice(&kind.to_le_bytes());
        log.extend_from_slice(&count.to_le_bytes());
        log.extend_from_slice(&alg.to_le_bytes());
        log.extend_from_slice(&[7u8; 48]);
        log.extend_from_slice(&size.to_le_bytes());
        log.extend_from_slice(&data);
        if let Ok(parsed) = TcgLog::parse(&log) {
            let _ = parsed.replay(HashAlg::Sha256);
        }
    }
}

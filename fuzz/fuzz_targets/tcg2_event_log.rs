//! The firmware's TCG2 crypto-agile event log: parse and replay in every bank.
#![no_main]
use cvm_attestation::eventlog::TcgLog;
use cvm_attestation::tpm::HashAlg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = TcgLog::parse(data) else {
        return;
    };
    for bank in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384] {
        let _ = log.replay(bank);
    }
});

//! Against a real swtpm: extending PCR 23 gives SHA-256(previous || digest), read back through
//! the same TCTI the agent uses.

use cvm_attester::tpm::{extended, Tpm, WORKLOAD_PCR};
use sha2::{Digest, Sha256};
use test_support::Swtpm;

#[test]
fn extend_pcr23_then_read_back() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;

    let before = tpm.read_sha256(&[WORKLOAD_PCR])?[0];
    assert_eq!(
        before, [0u8; 32],
        "PCR 23 starts at zero after startup-clear"
    );

    let digest: [u8; 32] = Sha256::digest(b"docker-compose.yml").into();
    tpm.extend_sha256(WORKLOAD_PCR, &digest)?;
    let after = tpm.read_sha256(&[WORKLOAD_PCR])?[0];
    let expected: [u8; 32] = Sha256::digest([[0u8; 32], digest].concat()).into();
    assert_eq!(hex::encode(after), hex::encode(expected));
    assert_eq!(after, extended(&before, &digest));

    // A second extend chains on the first, and other PCRs are untouched.
    tpm.extend_sha256(WORKLOAD_PCR, &digest)?;
    let values = tpm.read_sha256(&[16, WORKLOAD_PCR])?;
    assert_eq!(values[0], [0u8; 32]);
    assert_eq!(values[1], extended(&expected, &digest));
    Ok(())
}

#[test]
fn out_of_range_pcr_is_refused_by_name() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let err = tpm.extend_sha256(24, &[0; 32]).unwrap_err();
    assert_eq!(err.to_string(), "PCR index 24 is out of range 0..=23");
    Ok(())
}

#[test]
fn unreachable_tpm_is_a_clear_error() {
    let port = test_support::free_port().expect("port");
    let err = Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}"))
        .err()
        .expect("nothing listens there");
    assert!(err.to_string().contains("cannot open the TPM"), "{err}");
}

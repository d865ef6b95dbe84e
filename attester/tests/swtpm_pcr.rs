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

#[test]
fn quote_over_a_nonce_verifies_and_binds_it() -> anyhow::Result<()> {
    use cvm_attestation::tpm::{
        pcr_digest, qualifying_data, AkPublic, HashAlg, Quote, QuoteSignature,
    };
    use std::collections::BTreeMap;

    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    tpm.extend_sha256(WORKLOAD_PCR, &[7; 32])?;
    let ak = tpm.attestation_key(Some(cvm_attester::tpm::AZURE_AK_HANDLE))?;
    assert_eq!(
        ak.source,
        cvm_attester::AkSource::CreatedPrimary,
        "swtpm has no Azure AK"
    );
    let nonce = b"a fresh verifier nonce";
    let quoted = tpm.quote(&ak, &qualifying_data(nonce))?;

    let public = AkPublic::from_bytes(&ak.public)?;
    assert_eq!(public.is_restricted_signing_key(), Some(true));
    let signature = QuoteSignature::from_tpmt(&quoted.signature)?;
    assert!(signature.verify(&public.key, &quoted.attest)?);
    let quote = Quote::parse(&quoted.attest)?;
    assert_eq!(quote.extra_data, qualifying_data(nonce));
    let bank = quoted
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u8, v.to_vec()))
        .collect();
    let banks = BTreeMap::from([(HashAlg::Sha256, bank)]);
    assert_eq!(
        pcr_digest(&quote, &banks, signature.hash())?,
        quote.pcr_digest
    );
    assert_eq!(quoted.pcrs[23], extended(&[0; 32], &[7; 32]));

    // The same template gives the same AK again (no state to keep across agent restarts).
    let again = tpm.attestation_key(None)?;
    assert_eq!(again.public, ak.public);
    Ok(())
}

#[test]
fn nv_index_round_trip() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    tpm.nv_provision(0x0140_0001, &data)?;
    assert_eq!(tpm.nv_read(0x0140_0001)?, data);
    assert!(tpm.nv_read(0x0140_0002).is_err());
    Ok(())
}

//! The NitroTPM document request against a real swtpm, which does not implement the vendor
//! command: it must fail by name (TPM_RC_COMMAND_CODE) after the NV message-buffer protocol ran for
//! real (NV_DefineSpace and NV_Write succeed on swtpm), and leave no NV index behind.
//!
//! `Tpm::raw_command` opens its own TCTI connection beside the ESAPI one; tpm2-tss's swtpm TCTI
//! connects per command, so swtpm's one-client socket serves both in turn.

use cvm_attester::nitro::{nitro_tpm_document, NitroTpmError};
use cvm_attester::Tpm;
use test_support::Swtpm;

/// TPM2_GetCapability(TPM_CAP_HANDLES) over the owner NV range: the defined indices there.
fn owner_nv_indices(tpm: &mut Tpm) -> Vec<u32> {
    let mut command = vec![0x80, 0x01, 0, 0, 0, 22, 0, 0, 0x01, 0x7a];
    command.extend_from_slice(&1u32.to_be_bytes()); // TPM_CAP_HANDLES
    command.extend_from_slice(&0x0100_0000u32.to_be_bytes());
    command.extend_from_slice(&64u32.to_be_bytes());
    let response = tpm.raw_command(&command).unwrap();
    assert_eq!(&response[6..10], &[0, 0, 0, 0], "GetCapability failed");
    let count = u32::from_be_bytes(response[15..19].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| u32::from_be_bytes(response[19 + 4 * i..23 + 4 * i].try_into().unwrap()))
        .filter(|&handle| handle < 0x0140_0000)
        .collect()
}

#[test]
fn swtpm_refuses_the_vendor_command_by_name_and_keeps_no_nv_index() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let before = tpm.read_sha256(&[0])?;

    let err = nitro_tpm_document(&mut tpm, b"quote binding", &[0x42; 32]).unwrap_err();
    let NitroTpmError::NotNitroTpm { response_code } = err else {
        panic!("expected NotNitroTpm, got {err:?}");
    };
    assert_eq!(response_code & 0xfff, 0x143, "TPM_RC_COMMAND_CODE");
    assert!(err_text(response_code).contains("TPM_RC_COMMAND_CODE"));

    // The message buffer was defined and written (swtpm ran those commands), then undefined.
    assert_eq!(owner_nv_indices(&mut tpm), Vec::<u32>::new());
    // The ESAPI connection is untouched by the raw one.
    assert_eq!(tpm.read_sha256(&[0])?, before);
    Ok(())
}

fn err_text(response_code: u32) -> String {
    NitroTpmError::NotNitroTpm { response_code }.to_string()
}

#[test]
fn oversized_parameters_are_refused_before_the_tpm_is_asked() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let err = nitro_tpm_document(&mut tpm, &[0; 1025], b"nonce").unwrap_err();
    assert!(
        matches!(
            err,
            NitroTpmError::ParameterTooLarge {
                parameter: "user data",
                len: 1025
            }
        ),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn raw_commands_reach_the_same_tpm_as_esapi() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let digest = [7u8; 32];
    tpm.extend_sha256(16, &digest)?;
    // TPM2_PCR_Read of SHA-256 PCR 16, raw: the value ESAPI's extend left there.
    let command = [
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, // header, TPM_CC_PCR_Read
        0, 0, 0, 1, 0, 0x0b, 3, 0x00, 0x00, 0x01, // one selection: SHA-256, PCR 16
    ];
    let response = tpm.raw_command(&command)?;
    assert_eq!(&response[6..10], &[0, 0, 0, 0]);
    let value = &response[response.len() - 32..];
    assert_eq!(value, tpm.read_sha256(&[16])?[0]);
    assert_eq!(value, cvm_attester::tpm::extended(&[0; 32], &digest));
    Ok(())
}

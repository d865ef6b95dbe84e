//! Asks an EC2 NitroTPM for an AWS-signed attestation document, as AWS's nitro-tpm-attest does.
//!
//! The NitroTPM carries NSM requests through the vendor command TPM2_CC 0x20000001 and an NV index
//! used as a message buffer:
//! 1. define an NV index (owner hierarchy, AUTHREAD | AUTHWRITE, a random 32-byte auth value);
//! 2. write the CBOR NSM request `{"Attestation": {user_data, nonce, public_key}}` into it;
//! 3. send `TPM_ST_SESSIONS | size | 0x20000001 | nvIndex (auth handle) | nvIndex | auth area`
//!    with a password session carrying the index's auth value, and no parameters;
//! 4. the NSM has replaced the request with its CBOR response: read the index back;
//! 5. undefine the index, whatever happened.
//!
//! Everything goes through [`Tpm::raw_command`] with hand-marshalled commands (TPM 2.0 Part 3):
//! ESAPI has no vendor commands. A TPM without the command (swtpm, any non-Nitro TPM; also a
//! kernel before 6.3 on /dev/tpmrm0, which masks vendor commands) answers TPM_RC_COMMAND_CODE,
//! reported as [`NitroTpmError::NotNitroTpm`].

use crate::tpm::{Tpm, TpmError};
use cvm_attestation::nitro::nsm::{attestation_request, attestation_response, NsmResponseError};
use cvm_attestation::nitro::MAX_USER_FIELD;
use std::io::Read;

/// TPM2_CC_VENDOR_AWS_NSM_REQUEST.
pub const TPM2_CC_AWS_NSM_REQUEST: u32 = 0x2000_0001;
/// The message buffer: a document with all three optional fields at 1 KiB stays below 8 KiB.
pub const MESSAGE_BUFFER_SIZE: usize = 8192;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_CC_NV_UNDEFINE_SPACE: u32 = 0x122;
const TPM_CC_NV_DEFINE_SPACE: u32 = 0x12a;
const TPM_CC_NV_WRITE: u32 = 0x137;
const TPM_CC_NV_READ: u32 = 0x14e;
const TPM_CC_GET_CAPABILITY: u32 = 0x17a;
const TPM_CAP_TPM_PROPERTIES: u32 = 6;
const TPM_PT_NV_INDEX_MAX: u32 = 0x117;
const TPM_PT_NV_BUFFER_MAX: u32 = 0x12c;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPMA_NV_AUTHWRITE: u32 = 1 << 2;
const TPMA_NV_AUTHREAD: u32 = 1 << 18;
const TPM_RC_COMMAND_CODE: u32 = 0x143;
const TPM_RC_NV_DEFINED: u32 = 0x14c;
const TPM_RC_YIELDED: u32 = 0x908;
const TPM_RC_TESTING: u32 = 0x90a;
const TPM_RC_RETRY: u32 = 0x922;
/// Owner-defined NV indices (TCG handle registry): the buffer takes a random one in this range.
const NV_OWNER_RANGE: (u32, u32) = (0x0100_0000, 0x0040_0000);
const DEFINE_TRIES: usize = 8;

/// Why no document came back.
#[derive(Debug, thiserror::Error)]
pub enum NitroTpmError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("the {parameter} is {len} bytes; the NSM accepts at most {MAX_USER_FIELD}")]
    ParameterTooLarge { parameter: &'static str, len: usize },
    #[error("this TPM does not implement the NitroTPM vendor command {TPM2_CC_AWS_NSM_REQUEST:#010x} (TPM_RC_COMMAND_CODE, response code {response_code:#x}): not an EC2 NitroTPM, or a kernel before 6.3 refused the vendor command on /dev/tpmrm0")]
    NotNitroTpm { response_code: u32 },
    #[error("TPM {command} failed with response code {response_code:#x}")]
    Command {
        command: &'static str,
        response_code: u32,
    },
    #[error("TPM {command} returned a malformed response: {reason}")]
    Malformed {
        command: &'static str,
        reason: &'static str,
    },
    #[error("the TPM's NV indices hold at most {available} bytes; the NSM request needs {needed}")]
    NvIndexTooSmall { needed: usize, available: usize },
    #[error("no free NV index for the NSM message buffer after {DEFINE_TRIES} random picks")]
    NoFreeNvIndex,
    #[error("cannot read random bytes for the NV index auth value: {0}")]
    Random(std::io::Error),
    #[error(transparent)]
    Nsm(#[from] NsmResponseError),
}

/// A NitroTPM attestation document (COSE_Sign1, verified by `cvm_attestation::nitro`) carrying
/// `user_data` and `nonce` (each at most 1 KiB).
pub fn nitro_tpm_document(
    tpm: &mut Tpm,
    user_data: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, NitroTpmError> {
    for (parameter, value) in [("user data", user_data), ("nonce", nonce)] {
        if value.len() > MAX_USER_FIELD {
            return Err(NitroTpmError::ParameterTooLarge {
                parameter,
                len: value.len(),
            });
        }
    }
    let request = attestation_request(Some(user_data), Some(nonce), None);
    let available = tpm_property(tpm, TPM_PT_NV_INDEX_MAX)? as usize;
    let size = MESSAGE_BUFFER_SIZE.min(available);
    if request.len() > size {
        return Err(NitroTpmError::NvIndexTooSmall {
            needed: request.len(),
            available,
        });
    }
    let chunk = (tpm_property(tpm, TPM_PT_NV_BUFFER_MAX)? as usize).clamp(64, 1024);
    let auth = random::<32>()?;
    let index = define_buffer(tpm, &auth, size)?;
    let exchanged = exchange(tpm, index, &auth, &request, size, chunk);
    let undefined = command(tpm, "NV_UndefineSpace", &nv_undefine_space_command(index));
    // The exchange's error explains more than a failure to clean up after it.
    let response = exchanged?;
    undefined?;
    Ok(attestation_response(&response)?)
}

/// Steps 2 to 4: the request in, the vendor command, the response out.
fn exchange(
    tpm: &mut Tpm,
    index: u32,
    auth: &[u8],
    request: &[u8],
    size: usize,
    chunk: usize,
) -> Result<Vec<u8>, NitroTpmError> {
    for (i, part) in request.chunks(chunk).enumerate() {
        let write = nv_write_command(index, auth, part, (i * chunk) as u16);
        command(tpm, "NV_Write", &write)?;
    }
    let response = send(tpm, &nsm_request_command(index, auth))?;
    match response_code(&response) {
        0 => {}
        rc if rc & 0xfff == TPM_RC_COMMAND_CODE => {
            return Err(NitroTpmError::NotNitroTpm { response_code: rc })
        }
        rc => {
            return Err(NitroTpmError::Command {
                command: "NSM request (0x20000001)",
                response_code: rc,
            })
        }
    }
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let want = chunk.min(size - out.len());
        let read = nv_read_command(index, auth, want as u16, out.len() as u16);
        let response = command(tpm, "NV_Read", &read)?;
        out.extend_from_slice(nv_read_data(&response, want)?);
    }
    Ok(out)
}

/// Step 1, at a random owner index; another process holding that index means another pick.
fn define_buffer(tpm: &mut Tpm, auth: &[u8], size: usize) -> Result<u32, NitroTpmError> {
    for _ in 0..DEFINE_TRIES {
        let (first, count) = NV_OWNER_RANGE;
        let index = first + u32::from_le_bytes(random::<4>()?) % count;
        let response = send(tpm, &nv_define_space_command(index, auth, size as u16))?;
        match response_code(&response) {
            0 => return Ok(index),
            rc if rc & 0xfff == TPM_RC_NV_DEFINED => continue,
            rc => {
                return Err(NitroTpmError::Command {
                    command: "NV_DefineSpace",
                    response_code: rc,
                })
            }
        }
    }
    Err(NitroTpmError::NoFreeNvIndex)
}

/// Sends `bytes`, resubmitting while the TPM answers TPM_RC_RETRY, TPM_RC_YIELDED or
/// TPM_RC_TESTING ("not now, ask again"), as ESAPI does up to five submissions; swtpm answers
/// RETRY to an NV_Write right after NV_DefineSpace.
fn send(tpm: &mut Tpm, bytes: &[u8]) -> Result<Vec<u8>, NitroTpmError> {
    const SUBMISSIONS: u32 = 5;
    let mut submission = 1;
    loop {
        let response = tpm.raw_command(bytes)?;
        let again = matches!(
            response_code(&response),
            TPM_RC_RETRY | TPM_RC_YIELDED | TPM_RC_TESTING
        );
        if !again || submission == SUBMISSIONS {
            return Ok(response);
        }
        std::thread::sleep(std::time::Duration::from_millis(10 << submission));
        submission += 1;
    }
}

/// Sends `bytes`, turning any non-success response code into an error naming `name`.
fn command(tpm: &mut Tpm, name: &'static str, bytes: &[u8]) -> Result<Vec<u8>, NitroTpmError> {
    let response = send(tpm, bytes)?;
    match response_code(&response) {
        0 => Ok(response),
        rc => Err(NitroTpmError::Command {
            command: name,
            response_code: rc,
        }),
    }
}

/// One TPM property (TPM2_GetCapability, TPM_CAP_TPM_PROPERTIES).
fn tpm_property(tpm: &mut Tpm, property: u32) -> Result<u32, NitroTpmError> {
    let mut get = Marshal::new(TPM_ST_NO_SESSIONS, TPM_CC_GET_CAPABILITY);
    get.u32(TPM_CAP_TPM_PROPERTIES).u32(property).u32(1);
    let response = command(tpm, "GetCapability", &get.finish())?;
    let malformed = NitroTpmError::Malformed {
        command: "GetCapability",
        reason: "no value for the property asked",
    };
    // header, moreData, capability, count, then (property, value) pairs
    let field = |at: usize| response.get(at..at + 4).map(be_u32);
    match (field(15), field(19), field(23)) {
        (Some(count), Some(tag), Some(value)) if count >= 1 && tag == property => Ok(value),
        _ => Err(malformed),
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn response_code(response: &[u8]) -> u32 {
    // raw_command guarantees a 10-byte header.
    response.get(6..10).map(be_u32).unwrap_or(u32::MAX)
}

/// The data of an NV_Read response: header, parameterSize, TPM2B_MAX_NV_BUFFER, session.
fn nv_read_data(response: &[u8], want: usize) -> Result<&[u8], NitroTpmError> {
    let size = response
        .get(14..16)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    match size {
        Some(size) if size == want && response.len() >= 16 + size => Ok(&response[16..16 + size]),
        _ => Err(NitroTpmError::Malformed {
            command: "NV_Read",
            reason: "the data is not the size asked",
        }),
    }
}

fn random<const N: usize>() -> Result<[u8; N], NitroTpmError> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(NitroTpmError::Random)?;
    Ok(bytes)
}

/// The vendor command: both handles are the message buffer's index, authorized by its auth value
/// in a password session; no parameters.
pub fn nsm_request_command(index: u32, auth: &[u8]) -> Vec<u8> {
    let mut command = Marshal::new(TPM_ST_SESSIONS, TPM2_CC_AWS_NSM_REQUEST);
    command.u32(index).u32(index).password_session(auth);
    command.finish()
}

fn nv_define_space_command(index: u32, auth: &[u8], size: u16) -> Vec<u8> {
    let mut public = Marshal::body();
    public
        .u32(index)
        .u16(TPM_ALG_SHA256)
        .u32(TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD)
        .sized(&[]) // authPolicy
        .u16(size);
    let mut command = Marshal::new(TPM_ST_SESSIONS, TPM_CC_NV_DEFINE_SPACE);
    command
        .u32(TPM_RH_OWNER)
        .password_session(&[])
        .sized(auth)
        .sized(&public.0);
    command.finish()
}

fn nv_write_command(index: u32, auth: &[u8], data: &[u8], offset: u16) -> Vec<u8> {
    let mut command = Marshal::new(TPM_ST_SESSIONS, TPM_CC_NV_WRITE);
    command
        .u32(index)
        .u32(index)
        .password_session(auth)
        .sized(data)
        .u16(offset);
    command.finish()
}

fn nv_read_command(index: u32, auth: &[u8], size: u16, offset: u16) -> Vec<u8> {
    let mut command = Marshal::new(TPM_ST_SESSIONS, TPM_CC_NV_READ);
    command
        .u32(index)
        .u32(index)
        .password_session(auth)
        .u16(size)
        .u16(offset);
    command.finish()
}

fn nv_undefine_space_command(index: u32) -> Vec<u8> {
    let mut command = Marshal::new(TPM_ST_SESSIONS, TPM_CC_NV_UNDEFINE_SPACE);
    command.u32(TPM_RH_OWNER).u32(index).password_session(&[]);
    command.finish()
}

/// Big-endian TPM marshalling (TPM 2.0 Part 1, 18: command header, handles, auth area, params).
struct Marshal(Vec<u8>);

impl Marshal {
    fn new(tag: u16, code: u32) -> Self {
        let mut m = Self::body();
        m.u16(tag).u32(0).u32(code); // the size is patched in by `finish`
        m
    }

    fn body() -> Self {
        Self(Vec::new())
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A TPM2B: u16 size, then the bytes (callers keep them below 64 KiB).
    fn sized(&mut self, bytes: &[u8]) -> &mut Self {
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
        self
    }

    /// The authorization area with one password session (Part 1, 19.8.4): authorizationSize,
    /// TPM_RS_PW, an empty nonce, no session attributes, the password as the HMAC.
    fn password_session(&mut self, password: &[u8]) -> &mut Self {
        self.u32(4 + 2 + 1 + 2 + password.len() as u32)
            .u32(TPM_RS_PW)
            .sized(&[]);
        self.0.push(0);
        self.sized(password)
    }

    fn finish(mut self) -> Vec<u8> {
        let size = (self.0.len() as u32).to_be_bytes();
        self.0[2..6].copy_from_slice(&size);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte the vendor command nitro-tpm-attest sends with a password session: tag
    /// TPM_ST_SESSIONS, size, 0x20000001, the NV index twice, then the auth area.
    #[test]
    fn the_vendor_command_is_encoded_as_nitro_tpm_attest_does() {
        let auth = [0xa5u8; 32];
        let command = nsm_request_command(0x0100_0042, &auth);
        let mut expected = vec![
            0x80, 0x02, // TPM_ST_SESSIONS
            0x00, 0x00, 0x00, 0x3f, // 63 bytes
            0x20, 0x00, 0x00, 0x01, // TPM2_CC_VENDOR_AWS_NSM_REQUEST
            0x01, 0x00, 0x00, 0x42, // authHandle: the NV index
            0x01, 0x00, 0x00, 0x42, // nvIndex
            0x00, 0x00, 0x00, 0x29, // authorizationSize: 41
            0x40, 0x00, 0x00, 0x09, // TPM_RS_PW
            0x00, 0x00, // empty nonce
            0x00, // session attributes
            0x00, 0x20, // hmac: the 32-byte auth value
        ];
        expected.extend_from_slice(&auth);
        assert_eq!(command, expected);
    }

    #[test]
    fn nv_commands_are_well_formed() {
        let define = nv_define_space_command(0x0100_0001, &[7; 32], 8192);
        assert_eq!(be_u32(&define[2..6]) as usize, define.len());
        assert_eq!(be_u32(&define[6..10]), TPM_CC_NV_DEFINE_SPACE);
        assert_eq!(be_u32(&define[10..14]), TPM_RH_OWNER);
        // auth area: size 9, TPM_RS_PW, empty nonce, attributes 0, empty password
        assert_eq!(&define[14..27], &[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
        // TPM2B_AUTH then TPM2B_NV_PUBLIC {index, SHA-256, AUTHWRITE|AUTHREAD, no policy, 8192}
        assert_eq!(&define[27..29], &[0, 32]);
        assert_eq!(
            &define[61..],
            &[0, 14, 1, 0, 0, 1, 0, 0x0b, 0, 4, 0, 4, 0, 0, 0x20, 0][..]
        );
        let read = nv_read_command(0x0100_0001, &[7; 32], 1024, 2048);
        assert_eq!(&read[read.len() - 4..], &[4, 0, 8, 0]);
        let undefine = nv_undefine_space_command(0x0100_0001);
        assert_eq!(be_u32(&undefine[14..18]), 0x0100_0001);
    }

    #[test]
    fn nv_read_data_is_bounded_by_what_was_asked() {
        let mut response = vec![0x80, 0x02, 0, 0, 0, 25, 0, 0, 0, 0, 0, 0, 0, 6, 0, 4];
        response.extend_from_slice(&[1, 2, 3, 4]);
        response.extend_from_slice(&[0, 0, 1, 0, 0]);
        assert_eq!(nv_read_data(&response, 4).unwrap(), &[1, 2, 3, 4]);
        assert!(nv_read_data(&response, 5).is_err());
        assert!(nv_read_data(&response[..17], 4).is_err());
    }
}

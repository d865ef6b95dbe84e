//! Access to a TPM 2.0 through any TCTI (`device:/dev/tpmrm0` in the guest,
//! `swtpm:host=...,port=...` in tests), using tss-esapi.
//!
//! One `Tpm` owns one ESAPI context; callers serialize access (the TPM is one device) and no
//! session outlives a call.

use sha2::{Digest as _, Sha256};
use std::str::FromStr;
use tss_esapi::abstraction::nv;
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::attributes::{NvIndexAttributesBuilder, ObjectAttributesBuilder};
use tss_esapi::handles::{KeyHandle, NvIndexTpmHandle, PcrHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, DigestValues, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    MaxNvBuffer, NvPublicBuilder, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

/// The workload measurement register (see docs/measurement.md).
pub const WORKLOAD_PCR: u8 = 23;

/// Failures talking to the TPM, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("invalid TCTI configuration {tcti:?}: {source}")]
    Tcti {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("cannot open the TPM through {tcti:?}: {source}")]
    Open {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("PCR index {0} is out of range 0..=23")]
    PcrIndex(u8),
    #[error("TPM {operation} failed: {source}")]
    Command {
        operation: &'static str,
        source: tss_esapi::Error,
    },
    #[error("the TPM returned no SHA-256 value for PCR {0}")]
    MissingPcr(u8),
    #[error("NV index {index:#x} holds {size} bytes, more than the limit of {limit}")]
    NvTooLarge {
        index: u32,
        size: usize,
        limit: usize,
    },
}

pub(crate) fn command(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { operation, source }
}

/// Azure's persistent vTPM attestation key.
pub const AZURE_AK_HANDLE: u32 = 0x8100_0003;
/// Largest NV index this code reads (Azure HCL reports are about 2.6 KiB).
pub const MAX_NV_READ: usize = 16 * 1024;

/// Where the attestation key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AkSource {
    /// A persistent key the platform provisioned (Azure: 0x81000003).
    Persistent(u32),
    /// A restricted ECC P-256 signing key created as a primary in the endorsement hierarchy:
    /// the same template always yields the same key on the same TPM.
    CreatedPrimary,
}

/// A loaded attestation key.
#[derive(Debug, Clone)]
pub struct AttestationKey {
    handle: KeyHandle,
    /// TPMT_PUBLIC of the key.
    pub public: Vec<u8>,
    pub source: AkSource,
}

/// What TPM2_Quote returned, marshalled as the TPM defines it.
#[derive(Debug, Clone)]
pub struct TpmQuote {
    /// TPMS_ATTEST bytes (what was signed).
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE bytes.
    pub signature: Vec<u8>,
    /// SHA-256 bank values of PCRs 0..=23, read under the same lock right after the quote.
    pub pcrs: Vec<[u8; 32]>,
}

/// A connection to one TPM.
pub struct Tpm {
    pub(crate) context: Context,
    /// The TCTI this connection was opened with, for [`Tpm::raw_command`]'s own connection.
    tcti: TctiNameConf,
}

impl Tpm {
    /// Opens the TPM named by a TCTI string such as `device:/dev/tpmrm0`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let context = Context::new(conf.clone()).map_err(|source| TpmError::Open {
            tcti: tcti.to_owned(),
            source,
        })?;
        Ok(Self {
            context,
            tcti: conf,
        })
    }

    /// Extends a SHA-256 digest into PCR `index`: PCR := SHA-256(PCR || digest).
    pub fn extend_sha256(&mut self, index: u8, digest: &[u8; 32]) -> Result<(), TpmError> {
        let handle = pcr_handle(index)?;
        let mut values = DigestValues::new();
        let digest = Digest::try_from(digest.to_vec()).map_err(command("digest conversion"))?;
        values.set(HashingAlgorithm::Sha256, digest);
        self.context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(command("PCR_Extend"))
    }

    /// Sends one marshalled command as is and returns the TPM's whole response, header included:
    /// for vendor commands ESAPI cannot express (NitroTPM's 0x20000001). tss-esapi 7.7 keeps its
    /// ESYS and TCTI contexts private, so this opens a second TCTI connection to the same TPM for
    /// the command. The kernel resource manager (/dev/tpmrm0, as on EC2) admits many clients, and
    /// tpm2-tss's swtpm TCTI connects per command, so both serve it; /dev/tpm0 admits one open
    /// file, so a `Tpm` on it cannot. A TPM that never answers fails the call after `TIMEOUT_MS`.
    pub fn raw_command(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        use std::ptr::null_mut;
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        use tss_esapi::tss2_esys::{
            size_t, Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize, TSS2_RC, TSS2_TCTI_CONTEXT,
            TSS2_TCTI_CONTEXT_COMMON_V1,
        };
        use tss_esapi::{Error, WrapperErrorKind};
        /// Larger than any TPM 2.0 response (TPM2_PT_MAX_RESPONSE_SIZE is 4 KiB on common TPMs).
        const MAX_RESPONSE: usize = 16 * 1024;
        const TIMEOUT_MS: i32 = 120_000;
        /// Finalizes the TCTI however the command ends.
        struct Connection(*mut TSS2_TCTI_CONTEXT);
        impl Drop for Connection {
            fn drop(&mut self) {
                // SAFETY: the pointer came from Tss2_TctiLdr_Initialize and is finalized once.
                unsafe { Tss2_TctiLdr_Finalize(&mut self.0) }
            }
        }
        let failed = |operation, rc: TSS2_RC| TpmError::Command {
            operation,
            source: Error::Tss2Error(Tss2ResponseCode::from(rc)),
        };
        let malformed = |operation| TpmError::Command {
            operation,
            source: Error::WrapperError(WrapperErrorKind::WrongValueFromTpm),
        };
        let name = std::ffi::CString::try_from(self.tcti.clone())
            .map_err(self::command("raw command: TCTI name"))?;
        let mut connection = Connection(null_mut());
        // SAFETY: a NUL-terminated name and an out-pointer the loader fills.
        let rc = unsafe { Tss2_TctiLdr_Initialize(name.as_ptr(), &mut connection.0) };
        if rc != 0 || connection.0.is_null() {
            return Err(failed("raw command: open TCTI", rc));
        }
        // SAFETY: every TCTI context begins with TSS2_TCTI_CONTEXT_COMMON_V1 (TCG TSS 2.0 TCTI
        // specification); the Tss2_Tcti_Transmit/Receive macros read the same fields.
        let common = unsafe { &*(connection.0 as *const TSS2_TCTI_CONTEXT_COMMON_V1) };
        let (Some(transmit), Some(receive)) = (common.transmit, common.receive) else {
            return Err(malformed("raw command: TCTI without transmit/receive"));
        };
        // SAFETY: the TCTI reads exactly `command.len()` bytes from `command`.
        let rc = unsafe { transmit(connection.0, command.len() as size_t, command.as_ptr()) };
        if rc != 0 {
            return Err(failed("raw command: transmit", rc));
        }
        let mut response = vec![0u8; MAX_RESPONSE];
        let mut size = response.len() as size_t;
        // SAFETY: the TCTI writes at most `size` bytes into `response` and updates `size`.
        let rc = unsafe { receive(connection.0, &mut size, response.as_mut_ptr(), TIMEOUT_MS) };
        if rc != 0 {
            return Err(failed("raw command: receive", rc));
        }
        response.truncate((size as usize).min(MAX_RESPONSE));
        let declared = response
            .get(2..6)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if response.len() < 10 || declared != Some(response.len()) {
            return Err(malformed("raw command: response size"));
        }
        Ok(response)
    }

    /// Reads the SHA-256 bank values of the given PCRs, in the order asked.
    pub fn read_sha256(&mut self, indices: &[u8]) -> Result<Vec<[u8; 32]>, TpmError> {
        let slots = indices
            .iter()
            .map(|&i| pcr_slot(i))
            .collect::<Result<Vec<_>, _>>()?;
        let selection = sha256_selection(indices).map_err(command("PCR selection"))?;
        let data = self
            .context
            .execute_without_session(|ctx| read_all(ctx, selection))
            .map_err(command("PCR_Read"))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or(TpmError::MissingPcr(indices.first().copied().unwrap_or(0)))?;
        indices
            .iter()
            .zip(slots)
            .map(|(&index, slot)| {
                let value = bank.get_digest(slot).ok_or(TpmError::MissingPcr(index))?;
                value
                    .value()
                    .try_into()
                    .map_err(|_| TpmError::MissingPcr(index))
            })
            .collect()
    }
}

impl Tpm {
    /// The platform's persistent AK when there is one at `persistent` (Azure), otherwise a
    /// restricted signing key created from the endorsement hierarchy's seed.
    pub fn attestation_key(&mut self, persistent: Option<u32>) -> Result<AttestationKey, TpmError> {
        if let Some(raw) = persistent {
            let tpm_handle = PersistentTpmHandle::new(raw)
                .map(TpmHandle::Persistent)
                .map_err(command("persistent handle"))?;
            if let Ok(object) = self
                .context
                .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
            {
                let handle = KeyHandle::from(object);
                let (public, _, _) = self
                    .context
                    .execute_without_session(|ctx| ctx.read_public(handle))
                    .map_err(command("ReadPublic"))?;
                return Ok(AttestationKey {
                    handle,
                    public: public.marshall().map_err(command("marshal AK public"))?,
                    source: AkSource::Persistent(raw),
                });
            }
        }
        let template = restricted_ecc_signing_template().map_err(command("AK template"))?;
        self.create_primary(Hierarchy::Endorsement, template, "CreatePrimary (AK)")
    }

    /// Creates a primary key from a marshalled TPMT_PUBLIC template, in the endorsement hierarchy
    /// or else the owner's: how a cloud's pre-provisioned AK is recreated (GCE keeps its AK
    /// templates in NV), giving the same key on the same TPM every time.
    pub fn create_primary_from_template(
        &mut self,
        hierarchy_endorsement: bool,
        template_tpmt_public: &[u8],
    ) -> Result<AttestationKey, TpmError> {
        let template =
            Public::unmarshall(template_tpmt_public).map_err(command("unmarshal TPMT_PUBLIC"))?;
        let hierarchy = if hierarchy_endorsement {
            Hierarchy::Endorsement
        } else {
            Hierarchy::Owner
        };
        self.create_primary(hierarchy, template, "CreatePrimary (template)")
    }

    /// CreatePrimary under `hierarchy` from `template`, as an AK.
    fn create_primary(
        &mut self,
        hierarchy: Hierarchy,
        template: Public,
        operation: &'static str,
    ) -> Result<AttestationKey, TpmError> {
        let created = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(hierarchy, template, None, None, None, None)
            })
            .map_err(command(operation))?;
        Ok(AttestationKey {
            handle: created.key_handle,
            public: created
                .out_public
                .marshall()
                .map_err(command("marshal AK public"))?,
            source: AkSource::CreatedPrimary,
        })
    }

    /// Creates an RSA-2048 restricted signing key (RSASSA-SHA256) and makes it persistent at
    /// `handle`, as Azure provisions its vTPM AK at 0x81000003. For local VMs and tests; returns
    /// the key's TPMT_PUBLIC.
    pub fn provision_persistent_rsa_ak(&mut self, handle: u32) -> Result<Vec<u8>, TpmError> {
        let template = restricted_rsa_signing_template().map_err(command("AK template"))?;
        let created = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(command("CreatePrimary (RSA AK)"))?;
        let persistent = PersistentTpmHandle::new(handle).map_err(command("persistent handle"))?;
        self.context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(
                    Provision::Owner,
                    created.key_handle.into(),
                    Persistent::Persistent(persistent),
                )
            })
            .map_err(command("EvictControl"))?;
        self.context
            .flush_context(created.key_handle.into())
            .map_err(command("FlushContext"))?;
        created
            .out_public
            .marshall()
            .map_err(command("marshal AK public"))
    }

    /// Quotes PCRs 0..=23 of the SHA-256 bank over `qualifying_data` (at most 64 bytes) and
    /// reads their values.
    pub fn quote(
        &mut self,
        ak: &AttestationKey,
        qualifying_data: &[u8],
    ) -> Result<TpmQuote, TpmError> {
        let data = Data::try_from(qualifying_data.to_vec()).map_err(command("qualifying data"))?;
        let all: Vec<u8> = (0..24).collect();
        let (attest, signature) = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.quote(
                    ak.handle,
                    data,
                    SignatureScheme::Null,
                    sha256_selection(&all)?,
                )
            })
            .map_err(command("Quote"))?;
        let pcrs = self.read_sha256(&all)?;
        Ok(TpmQuote {
            attest: attest.marshall().map_err(command("marshal TPMS_ATTEST"))?,
            signature: signature
                .marshall()
                .map_err(command("marshal TPMT_SIGNATURE"))?,
            pcrs,
        })
    }

    /// Reads a whole NV index with owner authorization (Azure's HCL report at 0x01400001).
    pub fn nv_read(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let handle = NvIndexTpmHandle::new(index).map_err(command("NV index handle"))?;
        let bytes = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                nv::read_full(ctx, NvAuth::Owner, handle)
            })
            .map_err(command("NV_Read"))?;
        if bytes.len() > MAX_NV_READ {
            return Err(TpmError::NvTooLarge {
                index,
                size: bytes.len(),
                limit: MAX_NV_READ,
            });
        }
        Ok(bytes)
    }

    /// Defines an owner-readable NV index and writes `data` to it: how tests and local
    /// deployments provision what a cloud's vTPM would hold (e.g. an HCL report).
    pub fn nv_provision(&mut self, index: u32, data: &[u8]) -> Result<(), TpmError> {
        let handle = NvIndexTpmHandle::new(index).map_err(command("NV index handle"))?;
        let attributes = NvIndexAttributesBuilder::new()
            .with_owner_write(true)
            .with_owner_read(true)
            .build()
            .map_err(command("NV attributes"))?;
        let public = NvPublicBuilder::new()
            .with_nv_index(handle)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(data.len())
            .build()
            .map_err(command("NV public"))?;
        let nv_handle = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_define_space(Provision::Owner, None, public)
            })
            .map_err(command("NV_DefineSpace"))?;
        for (chunk_index, chunk) in data.chunks(1024).enumerate() {
            let buffer = MaxNvBuffer::try_from(chunk.to_vec()).map_err(command("NV buffer"))?;
            let offset = (chunk_index * 1024) as u16;
            self.context
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_write(NvAuth::Owner, nv_handle, buffer, offset)
                })
                .map_err(command("NV_Write"))?;
        }
        Ok(())
    }
}

pub(crate) fn sha256_selection(indices: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots: Vec<PcrSlot> = indices
        .iter()
        .filter_map(|&i| PcrSlot::try_from(1u32 << i).ok())
        .collect();
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

/// An attestation key's attributes: restricted signing key that never leaves this TPM.
fn restricted_signing_attributes() -> tss_esapi::Result<tss_esapi::attributes::ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
}

/// TPMT_PUBLIC template of an Azure-style AK: RSA 2048, RSASSA-SHA256, restricted signing.
fn restricted_rsa_signing_template() -> tss_esapi::Result<Public> {
    let attributes = restricted_signing_attributes()?;
    let parameters = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(RsaExponent::default())
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_rsa_parameters(parameters)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

/// TPMT_PUBLIC template of our AK: ECC P-256, ECDSA-SHA256, restricted signing, fixedTPM.
fn restricted_ecc_signing_template() -> tss_esapi::Result<Public> {
    let attributes = restricted_signing_attributes()?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The value a SHA-256 PCR takes after extending `digest` into `previous`.
pub fn extended(previous: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(digest);
    hasher.finalize().into()
}

fn pcr_slot(index: u8) -> Result<PcrSlot, TpmError> {
    if index > 23 {
        return Err(TpmError::PcrIndex(index));
    }
    PcrSlot::try_from(1u32 << index).map_err(|_| TpmError::PcrIndex(index))
}

fn pcr_handle(index: u8) -> Result<PcrHandle, TpmError> {
    use PcrHandle::*;
    const HANDLES: [PcrHandle; 24] = [
        Pcr0, Pcr1, Pcr2, Pcr3, Pcr4, Pcr5, Pcr6, Pcr7, Pcr8, Pcr9, Pcr10, Pcr11, Pcr12, Pcr13,
        Pcr14, Pcr15, Pcr16, Pcr17, Pcr18, Pcr19, Pcr20, Pcr21, Pcr22, Pcr23,
    ];
    HANDLES
        .get(usize::from(index))
        .copied()
        .ok_or(TpmError::PcrIndex(index))
}

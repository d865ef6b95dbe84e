//! Sealed data keys (docs/data-at-rest.md, `data_unlock = "sealed"`): a key for `/data` that a
//! root of trust inside the TEE gives back at every boot of the same image, and to nothing else.
//!
//! - SEV-SNP: the firmware's derived key ([`SnpDerivedKey`] over a [`DerivedKeySource`], the real
//!   one being [`SevGuestKeys`] on `/dev/sev-guest`), with the launch measurement and the guest
//!   policy mixed in.
//! - Azure: the paravisor's vTPM ([`VtpmSealer`]): a random key sealed under the storage
//!   hierarchy with a policy on PCRs 4, 9 and 11, kept at a persistent handle.
//!
//! The agent picks one with [`sealer_for`], which refuses platforms whose only TPM is the host's.

use crate::tpm::{command, sha256_selection, Tpm, TpmError};
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::workload::data::SealRoot;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Public, PublicBuilder, PublicKeyedHashParameters, RsaExponent,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};

/// Where the vTPM keeps the sealed key: a persistent handle in the owner range, clear of
/// Azure's vTPM layout (SRK 0x81000001, AK 0x81000003, EK 0x81010001).
pub const SEALED_KEY_HANDLE: u32 = 0x8100_0C0D;
/// The PCRs a vTPM-sealed key is bound to: the UKI (kernel, initrd, command line with the
/// verity root hash) as systemd-stub measures it; the same PCRs the golden values predict.
pub const SEALED_PCRS: [u8; 3] = [4, 9, 11];
/// Size of a key the vTPM seals (the SNP derived key is 32 bytes).
pub const SEALED_KEY_SIZE: usize = 64;

/// Why no sealed key.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "data_unlock = \"sealed\" is refused on {platform}: {why}; use \"pushed\" (the key is sent \
         after verifying the VM) or \"ephemeral\""
    )]
    Refused { platform: String, why: &'static str },
    #[error("SEV-SNP derived key (MSG_KEY_REQ through /dev/sev-guest): {0}")]
    SevGuest(String),
    #[error(
        "the vTPM did not unseal the data key at {handle:#x}: the PCR {pcrs:?} policy fails (this \
         is not the image that sealed it) or the object is not ours: {source}"
    )]
    Unseal {
        handle: u32,
        pcrs: [u8; 3],
        source: tss_esapi::Error,
    },
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// A root of trust that keeps the data key. `key` returns the same key at every boot of the same
/// image (making it on first use where the root stores one), and fails rather than make another.
pub trait KeySealer: Send {
    fn root(&self) -> SealRoot;
    fn key(&mut self) -> Result<Vec<u8>, SealError>;
}

/// The sealer for this platform, or why sealing protects nothing here.
pub fn sealer_for(platform: Platform, tcti: &str) -> Result<Box<dyn KeySealer>, SealError> {
    let refuse = |why| {
        Err(SealError::Refused {
            platform: format!("{:?}/{:?}", platform.cloud, platform.tee),
            why,
        })
    };
    match (platform.cloud, platform.tee) {
        (Cloud::Azure, Tee::SevSnp) => Ok(Box::new(VtpmSealer::open(tcti)?)),
        (_, Tee::SevSnp) => Ok(Box::new(SnpDerivedKey::new(SevGuestKeys { vmpl: 0 }))),
        (Cloud::Azure, Tee::Tdx) => {
            refuse("the Azure TDX paravisor vTPM is not supported for sealing yet (only SEV-SNP's)")
        }
        (_, Tee::Tdx) => refuse("TDX has no sealing key yet in this agent"),
        (Cloud::Gcp | Cloud::Aws, Tee::None) => refuse(
            "the only TPM is the cloud's vTPM, run by the host: a key sealed to it is the host's",
        ),
        (_, Tee::None) => refuse(
            "there is no TEE, and the only TPM (the local swtpm) is the host's: a key sealed to \
             it is the host's",
        ),
    }
}

/// Which root key the SNP firmware derives from (MSG_KEY_REQ ROOT_KEY_SELECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivedKeyRoot {
    /// The chip's VCEK: the key exists on this physical machine only.
    Vcek,
}

/// GUEST_FIELD_SELECT bits of MSG_KEY_REQ (SEV-SNP firmware ABI, table "Guest field select").
pub mod field_select {
    pub const GUEST_POLICY: u64 = 1 << 0;
    pub const MEASUREMENT: u64 = 1 << 3;
}

/// One derived-key request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivedKeyRequest {
    pub root: DerivedKeyRoot,
    /// [`field_select`] bits: what of the launch the firmware mixes into the key.
    pub field_select: u64,
    /// The VMPL mixed in (>= the caller's).
    pub vmpl: u32,
}

/// Something that answers MSG_KEY_REQ: the SEV-SNP firmware, or a test's stand-in.
pub trait DerivedKeySource: Send {
    fn derived_key(&mut self, request: &DerivedKeyRequest) -> Result<[u8; 32], SealError>;
}

/// The SEV-SNP firmware through `/dev/sev-guest`.
pub struct SevGuestKeys {
    pub vmpl: u32,
}

impl DerivedKeySource for SevGuestKeys {
    fn derived_key(&mut self, request: &DerivedKeyRequest) -> Result<[u8; 32], SealError> {
        use sev::firmware::guest::{DerivedKey, Firmware, GuestFieldSelect};
        let mut firmware = Firmware::open()
            .map_err(|e| SealError::SevGuest(format!("opening /dev/sev-guest: {e}")))?;
        let root_is_vmrk = match request.root {
            DerivedKeyRoot::Vcek => false,
        };
        let fields = GuestFieldSelect(request.field_select);
        // Message version 1: no launch mitigation vector (older firmware answers it too).
        let ask = DerivedKey::new(root_is_vmrk, fields, request.vmpl, 0, 0, None);
        firmware
            .get_derived_key(Some(1), ask)
            .map_err(|e| SealError::SevGuest(e.to_string()))
    }
}

/// The SNP firmware's derived key with the launch measurement and guest policy mixed in: the
/// same image launched with the same policy on the same chip gets the same key; nothing is
/// stored.
pub struct SnpDerivedKey<S> {
    source: S,
}

impl<S: DerivedKeySource> SnpDerivedKey<S> {
    pub fn new(source: S) -> Self {
        Self { source }
    }

    /// The request this sealer makes.
    pub fn request() -> DerivedKeyRequest {
        DerivedKeyRequest {
            root: DerivedKeyRoot::Vcek,
            field_select: field_select::MEASUREMENT | field_select::GUEST_POLICY,
            vmpl: 0,
        }
    }
}

impl<S: DerivedKeySource> KeySealer for SnpDerivedKey<S> {
    fn root(&self) -> SealRoot {
        SealRoot::SnpDerivedKey
    }

    fn key(&mut self) -> Result<Vec<u8>, SealError> {
        Ok(self.source.derived_key(&Self::request())?.to_vec())
    }
}

/// A key sealed in a vTPM under the owner's storage hierarchy to [`SEALED_PCRS`], kept at
/// [`SEALED_KEY_HANDLE`]. Made on first use (random, from the TPM); unsealed after.
pub struct VtpmSealer {
    tpm: Tpm,
    handle: u32,
}

impl VtpmSealer {
    pub fn open(tcti: &str) -> Result<Self, SealError> {
        Ok(Self::new(Tpm::open(tcti)?, SEALED_KEY_HANDLE))
    }

    pub fn new(tpm: Tpm, handle: u32) -> Self {
        Self { tpm, handle }
    }

    /// The sealed object at the handle, if there is one.
    fn existing(&mut self) -> Result<Option<ObjectHandle>, SealError> {
        let handle = PersistentTpmHandle::new(self.handle).map_err(command("persistent handle"))?;
        match self
            .tpm
            .context
            .tr_from_tpm_public(TpmHandle::Persistent(handle))
        {
            Ok(object) => Ok(Some(object)),
            // TPM_RC_HANDLE: nothing persisted there yet (first boot).
            Err(tss_esapi::Error::Tss2Error(rc)) if rc.kind() == Some(HANDLE_ERROR) => Ok(None),
            Err(source) => Err(TpmError::Command {
                operation: "ReadPublic (sealed key)",
                source,
            }
            .into()),
        }
    }

    /// A policy session whose digest is PolicyPCR over the current values of [`SEALED_PCRS`];
    /// `trial` only computes the digest.
    fn pcr_session(&mut self, trial: bool) -> Result<PolicySession, SealError> {
        let kind = if trial {
            SessionType::Trial
        } else {
            SessionType::Policy
        };
        let ctx = &mut self.tpm.context;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(command("StartAuthSession"))?
            .ok_or(TpmError::Command {
                operation: "StartAuthSession",
                source: tss_esapi::Error::WrapperError(
                    tss_esapi::WrapperErrorKind::WrongValueFromTpm,
                ),
            })?;
        let session = PolicySession::try_from(session).map_err(command("policy session"))?;
        let selection = sha256_selection(&SEALED_PCRS).map_err(command("PCR selection"))?;
        ctx.policy_pcr(session, Digest::default(), selection)
            .map_err(command("PolicyPCR"))?;
        Ok(session)
    }

    fn unseal(&mut self, object: ObjectHandle) -> Result<Vec<u8>, SealError> {
        let session = self.pcr_session(false)?;
        let ctx = &mut self.tpm.context;
        let result = ctx.execute_with_session(Some(AuthSession::PolicySession(session)), |ctx| {
            ctx.unseal(object)
        });
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        let data = result.map_err(|source| SealError::Unseal {
            handle: self.handle,
            pcrs: SEALED_PCRS,
            source,
        })?;
        Ok(data.value().to_vec())
    }

    /// A new random key, sealed to the current PCRs and made persistent.
    fn seal_new(&mut self) -> Result<Vec<u8>, SealError> {
        let trial = self.pcr_session(true)?;
        let ctx = &mut self.tpm.context;
        let policy = ctx
            .policy_get_digest(trial)
            .map_err(command("PolicyGetDigest"));
        let _ = ctx.flush_context(SessionHandle::from(trial).into());
        let key = ctx
            .get_random(SEALED_KEY_SIZE)
            .map_err(command("GetRandom"))?
            .value()
            .to_vec();
        let srk = storage_root(ctx)?;
        let sealed = sealed_object(policy?)
            .map_err(command("sealed object template"))
            .and_then(|public| {
                let data = SensitiveData::try_from(key.clone()).map_err(command("sealed data"))?;
                let created = ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.create(srk, public, None, Some(data), None, None)
                    })
                    .map_err(command("Create (sealed key)"))?;
                ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.load(srk, created.out_private, created.out_public)
                })
                .map_err(command("Load (sealed key)"))
            });
        let _ = ctx.flush_context(srk.into());
        let loaded = sealed?;
        let persistent = PersistentTpmHandle::new(self.handle).map_err(command("persistent"))?;
        let evicted = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(
                    Provision::Owner,
                    loaded.into(),
                    Persistent::Persistent(persistent),
                )
            })
            .map_err(command("EvictControl (sealed key)"));
        let _ = ctx.flush_context(loaded.into());
        evicted?;
        Ok(key)
    }
}

/// TPM_RC_HANDLE, as tss-esapi names a format-one error about a handle.
const HANDLE_ERROR: tss_esapi::constants::response_code::Tss2ResponseCodeKind =
    tss_esapi::constants::response_code::Tss2ResponseCodeKind::Handle;

impl KeySealer for VtpmSealer {
    fn root(&self) -> SealRoot {
        SealRoot::AzureVtpm
    }

    fn key(&mut self) -> Result<Vec<u8>, SealError> {
        match self.existing()? {
            Some(object) => self.unseal(object),
            None => self.seal_new(),
        }
    }
}

/// The owner hierarchy's storage root key (the standard RSA-2048 template: the same key on
/// the same TPM every time), loaded transiently.
fn storage_root(ctx: &mut tss_esapi::Context) -> Result<KeyHandle, SealError> {
    let template = tss_esapi::utils::create_restricted_decryption_rsa_public(
        SymmetricDefinitionObject::AES_128_CFB,
        RsaKeyBits::Rsa2048,
        RsaExponent::default(),
    )
    .map_err(command("SRK template"))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(command("CreatePrimary (SRK)"))?;
    Ok(created.key_handle)
}

/// A sealed data object usable only under `policy` (no password), bound to this TPM.
fn sealed_object(policy: Digest) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_auth_policy(policy)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

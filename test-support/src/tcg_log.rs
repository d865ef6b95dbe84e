//! TCG2 crypto-agile event logs built by hand (TCG PC Client Platform Firmware Profile 10.2),
//! for tests of what a verifier makes of a firmware event log (vTPM) or a TDX CC event log
//! (the same format, "PCR index" = measurement register: 0 = MRTD, 1..=4 = RTMR0..3).
//!
//! The first event is the SHA-1-format Spec ID event naming the banks; every later event carries
//! one digest per bank. Little-endian, as the firmware writes it.
//!
//! ```
//! use test_support::tcg_log::{Bank, TcgLogBuilder, EV_EFI_ACTION};
//! let mut log = TcgLogBuilder::new(&[Bank::Sha256, Bank::Sha384]);
//! log.measure(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option");
//! let bytes = log.bytes();
//! assert!(bytes.starts_with(&0u32.to_le_bytes()));
//! ```

use sha2::{Digest, Sha256, Sha384};

/// `EV_NO_ACTION`: informational, never extended (the Spec ID event is one).
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// `EV_SEPARATOR`: the firmware's end of pre-OS measurements in a PCR.
pub const EV_SEPARATOR: u32 = 0x0000_0004;
/// `EV_IPL`: systemd-stub's measurements of the UKI's sections (PCR 11).
pub const EV_IPL: u32 = 0x0000_000d;
/// `EV_EVENT_TAG`: the kernel EFI stub's command line and initrd (PCR 9).
pub const EV_EVENT_TAG: u32 = 0x0000_0006;
/// `EV_EFI_ACTION`, e.g. "Calling EFI Application from Boot Option" (PCR 4).
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
/// `EV_EFI_BOOT_SERVICES_APPLICATION`: a UEFI application's Authenticode digest (PCR 4).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;

/// A PCR bank the log carries digests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bank {
    Sha256,
    Sha384,
}

impl Bank {
    /// TPM_ALG_ID.
    pub fn alg_id(self) -> u16 {
        match self {
            Bank::Sha256 => 0x000b,
            Bank::Sha384 => 0x000c,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
        }
    }
}

/// A log under construction: the Spec ID event, then events in the order they are added.
#[derive(Debug, Clone)]
pub struct TcgLogBuilder {
    banks: Vec<Bank>,
    bytes: Vec<u8>,
}

impl TcgLogBuilder {
    /// A log whose Spec ID event lists `banks` (in this order; every event carries each).
    pub fn new(banks: &[Bank]) -> Self {
        assert!(!banks.is_empty(), "a TCG2 log needs at least one bank");
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
        spec.extend_from_slice(&[0, 2, 0, 2]); // specVersionMinor/Major 2.0, errata 0, uintnSize 2
        spec.extend_from_slice(&(banks.len() as u32).to_le_bytes());
        for bank in banks {
            spec.extend_from_slice(&bank.alg_id().to_le_bytes());
            spec.extend_from_slice(&(bank.size() as u16).to_le_bytes());
        }
        spec.push(0); // vendorInfoSize
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes()); // pcrIndex
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0; 20]); // SHA-1 sized digest, zero
        bytes.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&spec);
        Self {
            banks: banks.to_vec(),
            bytes,
        }
    }

    /// An event extending `index` with the hash of `data` in every bank (what
    /// `HashLogExtendEvent` does), `data` as its event data.
    pub fn measure(&mut self, index: u32, event_type: u32, data: &[u8]) -> &mut Self {
        let digests: Vec<Vec<u8>> = self.banks.iter().map(|bank| bank.digest(data)).collect();
        self.push(index, event_type, &digests, data)
    }

    /// An event extending `index` with the given digests, one per bank in the log's order (an
    /// Authenticode digest, say, which is not the hash of the event data).
    pub fn extend(
        &mut self,
        index: u32,
        event_type: u32,
        digests: &[&[u8]],
        data: &[u8],
    ) -> &mut Self {
        let digests: Vec<Vec<u8>> = digests.iter().map(|d| d.to_vec()).collect();
        self.push(index, event_type, &digests, data)
    }

    fn push(&mut self, index: u32, event_type: u32, digests: &[Vec<u8>], data: &[u8]) -> &mut Self {
        assert_eq!(digests.len(), self.banks.len(), "one digest per bank");
        self.bytes.extend_from_slice(&index.to_le_bytes());
        self.bytes.extend_from_slice(&event_type.to_le_bytes());
        self.bytes
            .extend_from_slice(&(digests.len() as u32).to_le_bytes());
        for (bank, digest) in self.banks.iter().zip(digests) {
            assert_eq!(digest.len(), bank.size(), "{bank:?} digest size");
            self.bytes.extend_from_slice(&bank.alg_id().to_le_bytes());
            self.bytes.extend_from_slice(digest);
        }
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(data);
        self
    }

    /// The log as the firmware exposes it.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

//! TCG2 crypto-agile event logs (TCG PC Client Platform Firmware Profile, 10.2): the firmware's
//! `binary_bios_measurements` for PCRs, and the same format as the TDX CC event log (CCEL), whose
//! "PCR index" is a measurement register (0 = MRTD, 1..4 = RTMR0..3).
//!
//! The first event is in the old SHA-1 format and carries the Spec ID event, which lists the
//! banks and their digest sizes; every later event carries one digest per bank. Little-endian.

use crate::tpm::HashAlg;
use std::collections::BTreeMap;

/// Largest log accepted.
pub const MAX_LOG_BYTES: usize = 4 << 20;
/// Largest number of events.
pub const MAX_EVENTS: usize = 100_000;
/// `EV_NO_ACTION`: informational, never extended.
pub const EV_NO_ACTION: u32 = 3;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcgEvent {
    pub index: u32,
    pub event_type: u32,
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcgLog {
    /// Banks from the Spec ID event: (TPM_ALG_ID, digest size).
    pub banks: Vec<(u16, u16)>,
    pub events: Vec<TcgEvent>,
    /// Locality from a StartupLocality event (the initial value of PCR 0), when present.
    pub startup_locality: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("event log is {0} bytes, more than the limit of {MAX_LOG_BYTES}")]
    TooLarge(usize),
    #[error("event log is truncated in event {event} ({field})")]
    Truncated { event: usize, field: &'static str },
    #[error("event log does not start with a Spec ID event (\"Spec ID Event03\")")]
    NoSpecId,
    #[error("event {event} has a digest for algorithm {alg:#06x}, which the Spec ID event does not list")]
    UnknownAlgorithm { event: usize, alg: u16 },
    #[error("event log has more than {MAX_EVENTS} events")]
    TooManyEvents,
    #[error("event {event} claims {size} bytes of data, more than the log holds")]
    EventSize { event: usize, size: usize },
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
    event: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], EventLogError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(EventLogError::Truncated {
            event: self.event,
            field,
        })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, EventLogError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EventLogError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn data(&mut self) -> Result<&'a [u8], EventLogError> {
        let size = self.u32("eventSize")? as usize;
        if size > self.bytes.len() - self.offset {
            return Err(EventLogError::EventSize {
                event: self.event,
                size,
            });
        }
        self.take(size, "event")
    }

    /// Event 0: TCG_PCClientPCREvent with a SHA-1 sized digest and the Spec ID event; returns
    /// its banks.
    fn spec_id_banks(&mut self) -> Result<Vec<(u16, u16)>, EventLogError> {
        self.u32("pcrIndex")?;
        let kind = self.u32("eventType")?;
        self.take(20, "digest")?;
        let spec = self.data()?;
        if kind != EV_NO_ACTION || !spec.starts_with(b"Spec ID Event03\0") {
            return Err(EventLogError::NoSpecId);
        }
        let mut s = Cursor {
            bytes: spec,
            offset: 16,
            event: 0,
        };
        s.take(8, "Spec ID header")?; // platformClass, versions, errata, uintnSize
        let count = s.u32("numberOfAlgorithms")? as usize;
        if count > 16 {
            return Err(EventLogError::NoSpecId);
        }
        let mut banks = Vec::with_capacity(count);
        for _ in 0..count {
            banks.push((s.u16("algorithmId")?, s.u16("digestSize")?));
        }
        Ok(banks)
    }

    /// One TCG_PCR_EVENT2, with a digest per listed bank at most.
    fn next_event(&mut self, banks: &[(u16, u16)]) -> Result<TcgEvent, EventLogError> {
        let index = self.u32("pcrIndex")?;
        let event_type = self.u32("eventType")?;
        let digest_count = self.u32("digests.count")? as usize;
        if digest_count > banks.len() {
            return Err(EventLogError::Truncated {
                event: self.event,
                field: "digests.count",
            });
        }
        let mut digests = Vec::with_capacity(digest_count);
        for _ in 0..digest_count {
            let alg = self.u16("hashAlg")?;
            let size = banks
                .iter()
                .find(|(id, _)| *id == alg)
                .map(|(_, size)| usize::from(*size))
                .ok_or(EventLogError::UnknownAlgorithm {
                    event: self.event,
                    alg,
                })?;
            digests.push((alg, self.take(size, "digest")?.to_vec()));
        }
        let data = self.data()?.to_vec();
        Ok(TcgEvent {
            index,
            event_type,
            digests,
            data,
        })
    }
}

impl TcgLog {
    /// Parses a crypto-agile log. Trailing zero bytes (unused log area) end it.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        if bytes.len() > MAX_LOG_BYTES {
            return Err(EventLogError::TooLarge(bytes.len()));
        }
        let mut c = Cursor {
            bytes,
            offset: 0,
            event: 0,
        };
        let banks = c.spec_id_banks()?;
        let mut events = Vec::new();
        let mut startup_locality = None;
        while c.offset < bytes.len() {
            if bytes[c.offset..].iter().all(|&b| b == 0) {
                break;
            }
            c.event = events.len() + 1;
            if events.len() >= MAX_EVENTS {
                return Err(EventLogError::TooManyEvents);
            }
            let event = c.next_event(&banks)?;
            if event.event_type == EV_NO_ACTION && event.data.starts_with(b"StartupLocality\0") {
                startup_locality = event.data.get(16).copied();
            }
            events.push(event);
        }
        Ok(Self {
            banks,
            events,
            startup_locality,
        })
    }

    /// The register values the log produces in one bank, from reset values (PCR 0 starts at the
    /// startup locality when the log says so).
    pub fn replay(&self, bank: HashAlg) -> BTreeMap<u32, Vec<u8>> {
        let mut registers: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        if let Some(locality) = self.startup_locality {
            let mut initial = vec![0u8; bank.size()];
            if let Some(last) = initial.last_mut() {
                *last = locality;
            }
            registers.insert(0, initial);
        }
        for event in &self.events {
            if event.event_type == EV_NO_ACTION {
                continue;
            }
            let Some((_, digest)) = event.digests.iter().find(|(alg, _)| *alg == bank.tpm_id())
            else {
                continue;
            };
            let register = registers
                .entry(event.index)
                .or_insert_with(|| vec![0u8; bank.size()]);
            let mut input = register.clone();
            input.extend_from_slice(digest);
            *register = bank.digest(&input);
        }
        registers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal log: Spec ID (SHA-256 only), two events into PCR 4, one EV_NO_ACTION.
    pub(crate) fn sample() -> Vec<u8> {
        let mut log = Vec::new();
        log.extend_from_slice(&0u32.to_le_bytes());
        log.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        log.extend_from_slice(&[0; 20]);
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        spec.extend_from_slice(&1u32.to_le_bytes());
        spec.extend_from_slice(&0x000bu16.to_le_bytes());
        spec.extend_from_slice(&32u16.to_le_bytes());
        spec.push(0);
        log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        log.extend_from_slice(&spec);
        for (index, kind, digest) in [
            (4u32, 0x8000_0007u32, [1u8; 32]),
            (4, EV_NO_ACTION, [9; 32]),
            (4, 4, [2; 32]),
        ] {
            log.extend_from_slice(&index.to_le_bytes());
            log.extend_from_slice(&kind.to_le_bytes());
            log.extend_from_slice(&1u32.to_le_bytes());
            log.extend_from_slice(&0x000bu16.to_le_bytes());
            log.extend_from_slice(&digest);
            log.extend_from_slice(&3u32.to_le_bytes());
            log.extend_from_slice(b"abc");
        }
        log.extend_from_slice(&[0; 64]); // unused log area
        log
    }

    #[test]
    fn replays_extends_and_skips_no_action() {
        let log = TcgLog::parse(&sample()).unwrap();
        assert_eq!(log.events.len(), 3);
        let pcr4 = log.replay(HashAlg::Sha256)[&4].clone();
        let step1 = HashAlg::Sha256.digest(&[[0u8; 32], [1u8; 32]].concat());
        let step2 = HashAlg::Sha256.digest(&[step1, vec![2u8; 32]].concat());
        assert_eq!(pcr4, step2);
        assert!(log.replay(HashAlg::Sha384).is_empty());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        let end = bytes.len() - 64;
        for len in 0..end {
            if let Ok(log) = TcgLog::parse(&bytes[..len]) {
                assert!(log.events.len() < 3, "prefix {len} parsed fully");
            }
        }
        let mut huge = bytes.clone();
        let at = bytes.len() - 64 - 7; // eventSize of the last event
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(TcgLog::parse(&huge).is_err());
    }
}

//! A bounds-checked little-endian reader for Intel's quote structures: the TPM reader
//! (`tpm/wire.rs`, big-endian) with little-endian integers. Every read succeeds within the buffer
//! or returns an error naming the structure and field, so hostile bytes cannot panic.

use crate::tpm::wire::{Reader, WireError};

pub struct LeReader<'a>(Reader<'a>);

impl<'a> LeReader<'a> {
    pub fn new(structure: &'static str, bytes: &'a [u8]) -> Self {
        Self(Reader::new(structure, bytes))
    }

    pub fn offset(&self) -> usize {
        self.0.offset()
    }

    pub fn remaining(&self) -> usize {
        self.0.remaining()
    }

    pub fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], WireError> {
        self.0.take(field, len)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        self.0.array(field)
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// `len` bytes announced by the caller, at most `limit`.
    pub fn sized(
        &mut self,
        field: &'static str,
        len: usize,
        limit: usize,
    ) -> Result<&'a [u8], WireError> {
        if len > limit {
            return Err(self.0.too_large(field, len, limit));
        }
        self.take(field, len)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        self.0.finish()
    }
}

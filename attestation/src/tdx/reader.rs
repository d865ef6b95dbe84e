//! A bounds-checked little-endian reader for Intel's quote structures: every read succeeds within
//! the buffer or returns an error naming the structure and field, so hostile bytes cannot panic.
//! (The TPM reader in `tpm/wire.rs` is big-endian; the error type is shared.)

use crate::tpm::wire::WireError;

pub struct LeReader<'a> {
    structure: &'static str,
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> LeReader<'a> {
    pub fn new(structure: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            structure,
            bytes,
            offset: 0,
        }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    pub fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], WireError> {
        let available = self.remaining();
        if len > available {
            return Err(WireError::Truncated {
                structure: self.structure,
                field,
                offset: self.offset,
                needed: len,
                available,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
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
            return Err(WireError::TooLarge {
                structure: self.structure,
                field,
                size: len,
                limit,
            });
        }
        self.take(field, len)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        let count = self.remaining();
        if count != 0 {
            return Err(WireError::Trailing {
                structure: self.structure,
                count,
            });
        }
        Ok(())
    }
}

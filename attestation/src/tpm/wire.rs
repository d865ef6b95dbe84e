//! A bounds-checked big-endian reader for TPM 2.0 structures: every read either succeeds within
//! the buffer or returns an error naming the field, so malformed input cannot panic.

/// Why TPM bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{structure}: truncated at {field} (needs {needed} bytes at offset {offset}, {available} left)")]
    Truncated {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{structure}: {field} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        structure: &'static str,
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{structure}: {count} trailing bytes after the structure")]
    Trailing {
        structure: &'static str,
        count: usize,
    },
    #[error("{structure}: {field} has unsupported value {value:#x}")]
    Unsupported {
        structure: &'static str,
        field: &'static str,
        value: u32,
    },
}

/// Reads fields in order from a byte slice.
pub struct Reader<'a> {
    structure: &'static str,
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
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

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(field, 1)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b = self.take(field, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: a u16 size followed by that many bytes, at most `limit`.
    pub fn tpm2b(&mut self, field: &'static str, limit: usize) -> Result<&'a [u8], WireError> {
        let size = usize::from(self.u16(field)?);
        if size > limit {
            return Err(WireError::TooLarge {
                structure: self.structure,
                field,
                size,
                limit,
            });
        }
        self.take(field, size)
    }

    pub fn unsupported(&self, field: &'static str, value: u32) -> WireError {
        WireError::Unsupported {
            structure: self.structure,
            field,
            value,
        }
    }

    pub fn too_large(&self, field: &'static str, size: usize, limit: usize) -> WireError {
        WireError::TooLarge {
            structure: self.structure,
            field,
            size,
            limit,
        }
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

//! The on-disk collateral cache: one JSON envelope per entry, at a path that says what it is for
//! (`amd/Milan/vcek/{chip}-{tcb}.json`, `intel/tdx/tcb/{fmspc}.json`, ...), written atomically
//! (temp file + rename, 0644) and read back with a size bound. An entry records when it was
//! fetched and when it goes stale; a cached entry proves nothing by itself: `verify` checks
//! everything in it against the pinned roots every time.

use super::validate::{validate, Parsed};
use cvm_attestation::encoding::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest entry file read back (envelopes hold one certificate, chain, CRL or JSON body).
pub const MAX_ENTRY_BYTES: u64 = 2 << 20;
/// The most entries a cache walk looks at.
const MAX_ENTRIES: usize = 100_000;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A VCEK certificate (DER) from AMD KDS.
    AmdVcek,
    /// ASK then ARK (PEM) from `/vcek/v1/{product}/cert_chain`.
    AmdCertChain,
    /// ASVK then ARK (PEM) from `/vlek/v1/{product}/cert_chain`.
    AmdVlekCertChain,
    /// The ARK-signed CRL (DER) for ASKs, or for ASVKs.
    AmdCrl,
    AmdVlekCrl,
    /// Intel PCS `tcb` response (JSON), with its TCB-Info-Issuer-Chain.
    IntelTcbInfo,
    /// Intel PCS `qe/identity` response (JSON), with its SGX-Enclave-Identity-Issuer-Chain.
    IntelQeIdentity,
    /// PCK CRL (DER), with its SGX-PCK-CRL-Issuer-Chain.
    IntelPckCrl,
    /// Intel SGX Root CA CRL (DER).
    IntelRootCaCrl,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::AmdVcek => "AMD VCEK",
            Kind::AmdCertChain => "AMD ASK/ARK chain",
            Kind::AmdVlekCertChain => "AMD ASVK/ARK chain",
            Kind::AmdCrl => "AMD CRL (ASK)",
            Kind::AmdVlekCrl => "AMD CRL (ASVK)",
            Kind::IntelTcbInfo => "Intel TCB info",
            Kind::IntelQeIdentity => "Intel QE identity",
            Kind::IntelPckCrl => "Intel PCK CRL",
            Kind::IntelRootCaCrl => "Intel root CA CRL",
        }
    }
}

/// One cached document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub kind: Kind,
    /// The URL it was fetched from (or where an import says it came from).
    pub source: String,
    /// Unix seconds.
    pub fetched_at: i64,
    /// The document's own nextUpdate (CRLs, TCB info, QE identity), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_update: Option<i64>,
    /// The earliest notAfter of its certificates, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// The body as served (CRLs normalised to DER).
    pub body: Bytes,
    /// PEM issuer chain from the response header (Intel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_chain: Option<String>,
}

impl Entry {
    /// When it stops being current: its nextUpdate, else its certificates' expiry.
    pub fn stale_at(&self) -> Option<i64> {
        match (self.next_update, self.not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn current_at(&self, at: i64) -> bool {
        self.stale_at().is_none_or(|stale| at < stale)
    }
}

/// A cache key: a relative path of plain segments, without the `.json`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    pub fn new(path: impl Into<String>) -> Result<Self, CacheError> {
        let path = path.into();
        let ok = !path.is_empty()
            && path.len() <= 512
            && path.split('/').all(|segment| {
                !segment.is_empty()
                    && !segment.starts_with('.')
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if ok {
            Ok(Self(path))
        } else {
            Err(CacheError::BadKey(path))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = CacheError;
    fn try_from(value: String) -> Result<Self, CacheError> {
        Key::new(value)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0:?} is not a cache key (plain path segments of [A-Za-z0-9._-])")]
    BadKey(String),
    #[error("cache entry {path}: {problem} (delete it, or run `cvm-cli collateral prune`)")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `~/.cache/cvm-cli/collateral`, or under `$XDG_CACHE_HOME` when set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(xdg) => PathBuf::from(xdg),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
        };
        Some(base.join("cvm-cli").join("collateral"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, key: &Key) -> PathBuf {
        self.root.join(format!("{}.json", key.0))
    }

    /// The entry under `key`; `Ok(None)` when there is none. An entry that does not read back,
    /// or whose body does not parse as its kind, is an error that names the file.
    pub fn get(&self, key: &Key) -> Result<Option<(Entry, Parsed)>, CacheError> {
        let path = self.path(key);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        file.take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        let corrupt = |problem: String| CacheError::Corrupt {
            path: path.clone(),
            problem,
        };
        if bytes.len() as u64 > MAX_ENTRY_BYTES {
            return Err(corrupt(format!("larger than {MAX_ENTRY_BYTES} bytes")));
        }
        let mut entry: Entry =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not an entry: {e}")))?;
        let parsed = validate(
            entry.kind,
            entry.body.as_slice(),
            entry.issuer_chain.as_deref(),
        )
        .map_err(|e| corrupt(format!("{}: {e}", entry.kind.describe())))?;
        // Freshness comes from the document itself, not from the envelope.
        entry.next_update = parsed.next_update;
        entry.not_after = parsed.not_after;
        Ok(Some((entry, parsed)))
    }

    /// Writes `entry` under `key`: a temp file in the same directory, then a rename.
    pub fn put(&self, key: &Key, entry: &Entry) -> Result<PathBuf, CacheError> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| CacheError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let mut nonce = [0u8; 8];
        let _ = openssl::rand::rand_bytes(&mut nonce);
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            hex::encode(nonce)
        ));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temp)?;
            // The umask may have narrowed the mode.
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(&path)(e));
        }
        Ok(path)
    }

    pub fn remove(&self, key: &Key) -> Result<(), CacheError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every key in the cache, sorted (temp and lock files are not entries).
    pub fn keys(&self) -> Result<Vec<Key>, CacheError> {
        let mut keys = Vec::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let listing = match std::fs::read_dir(&dir) {
                Ok(listing) => listing,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for item in listing {
                let item = item.map_err(io(&dir))?;
                let path = item.path();
                let kind = item.file_type().map_err(io(&path))?;
                if kind.is_dir() {
                    pending.push(path);
                } else if let Some(rel) = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .and_then(|p| p.strip_suffix(".json"))
                {
                    if let Ok(key) = Key::new(rel) {
                        keys.push(key);
                    }
                }
                if keys.len() > MAX_ENTRIES {
                    return Err(CacheError::Corrupt {
                        path: self.root.clone(),
                        problem: format!("more than {MAX_ENTRIES} entries"),
                    });
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// An exclusive lock on `key` across processes (a `.lock` file beside the entry, flock'd),
    /// held until the guard drops.
    pub fn lock(&self, key: &Key) -> Result<KeyLock, CacheError> {
        let path = self.root.join(format!("{}.lock", key.0));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&path)
            .map_err(io(&path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; it is released when the file closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(KeyLock { _file: file })
    }
}

/// Holds a key's lock file locked.
pub struct KeyLock {
    _file: std::fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        for good in ["amd/Milan/vcek/ab-1-2", "intel/tdx/tcb/00806f050000"] {
            assert!(Key::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/../b",
            "a/.hidden",
            "a b",
            "a\\b",
        ] {
            assert!(Key::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn staleness_is_the_earlier_of_next_update_and_expiry() {
        let entry = |next_update, not_after| Entry {
            kind: Kind::AmdCrl,
            source: String::new(),
            fetched_at: 0,
            next_update,
            not_after,
            body: Bytes::default(),
            issuer_chain: None,
        };
        assert_eq!(entry(Some(10), Some(5)).stale_at(), Some(5));
        assert_eq!(entry(None, Some(5)).stale_at(), Some(5));
        assert!(entry(None, None).current_at(i64::MAX));
        assert!(entry(Some(10), None).current_at(9));
        assert!(!entry(Some(10), None).current_at(10));
    }
}

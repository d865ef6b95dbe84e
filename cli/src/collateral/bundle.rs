//! Offline bundles: one JSON file with cache entries (all of them, or those some inputs need),
//! for verifiers without network. Import checks every entry parses as its kind before it goes
//! into the cache; trust still comes only from the pinned roots at `verify` time.

use super::cache::{Cache, Entry, Key};
use super::validate::validate;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

const FORMAT: &str = "cvm-cli collateral bundle";
/// The largest bundle read.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    pub created_at: i64,
    pub entries: Vec<BundleEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    pub key: Key,
    pub entry: Entry,
}

/// Writes the entries under `keys` (every key when `None`) to `out`; returns how many.
pub fn export(cache: &Cache, keys: Option<Vec<Key>>, out: &Path) -> Result<usize> {
    let keys = match keys {
        Some(keys) => keys,
        None => cache.keys()?,
    };
    let mut entries = Vec::new();
    for key in keys {
        let (entry, _) = cache
            .get(&key)?
            .with_context(|| format!("{key} is not in the cache {}", cache.root().display()))?;
        entries.push(BundleEntry { key, entry });
    }
    let bundle = Bundle {
        format: FORMAT.into(),
        version: 1,
        created_at: super::fetch::now(),
        entries,
    };
    let temp = out.with_extension("tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(&bundle)?)
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(bundle.entries.len())
}

/// Reads a bundle and puts each entry into `cache` once every one of them validated.
pub fn import(cache: &Cache, path: &Path) -> Result<usize> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        bail!("{}: larger than {MAX_BUNDLE_BYTES} bytes", path.display());
    }
    let bundle: Bundle = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a collateral bundle", path.display()))?;
    if bundle.format != FORMAT || bundle.version != 1 {
        bail!(
            "{}: format {:?} version {} (expected {FORMAT:?} version 1)",
            path.display(),
            bundle.format,
            bundle.version
        );
    }
    let mut bundle = bundle;
    for item in &mut bundle.entries {
        let entry = &mut item.entry;
        let parsed = validate(
            entry.kind,
            entry.body.as_slice(),
            entry.issuer_chain.as_deref(),
        )
        .with_context(|| format!("bundle entry {} ({})", item.key, entry.kind.describe()))?;
        // The dates come from the documents, not from what the bundle says about them.
        entry.next_update = parsed.next_update;
        entry.not_after = parsed.not_after;
    }
    for item in &bundle.entries {
        cache.put(&item.key, &item.entry)?;
    }
    Ok(bundle.entries.len())
}

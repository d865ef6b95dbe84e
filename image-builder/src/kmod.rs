//! Kernel modules for the initrd: Debian's kernel package ships no `modules.dep`, so the load
//! order comes from each module's own `.modinfo` `depends=` list, read from its ELF sections.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{invalid, IoContext, Result};

/// Module names use `-` and `_` interchangeably; the kernel treats them as equal.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The key=value strings of an ELF64 module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = || invalid("not a little-endian ELF64 kernel module");
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let shoff = u64_at(0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x3c).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)? as usize;
    if shentsize < 64 || shstrndx >= shnum {
        return Err(bad());
    }
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)?,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(bad)?;
    let strtab = elf
        .get(stroff..stroff.checked_add(strsize).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(bad)?;
        let name = strtab.get(name as usize..).ok_or_else(bad)?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == b".modinfo" {
            let data = elf
                .get(off..off.checked_add(size).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|s| {
                    let s = std::str::from_utf8(s).ok()?;
                    let (k, v) = s.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Err(invalid("kernel module has no .modinfo section"))
}

/// A module's ELF bytes; `.ko.xz` and `.ko.zst` (Debian 13) are decompressed with `xz`/`zstd`,
/// since busybox `insmod` loads plain ELF only.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else {
        return std::fs::read(path).ctx("reading module", path);
    };
    let out = crate::cmd::run(std::process::Command::new(tool).args(["-dc"]).arg(path))?;
    Ok(out.stdout)
}

/// The name a module is stored under in the initrd (`dm-verity.ko`).
pub fn plain_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    Some(format!("{}.ko", name.split(".ko").next()?))
}

/// Resolves `wanted` module names against the module tree `moddir` (`lib/modules/<version>`):
/// returns the `.ko` files to load, each after its dependencies, in a stable order. Modules that
/// `modules.builtin` lists are skipped (they need no loading).
pub fn resolve(moddir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx("reading module dir", &dir)? {
            let path = entry.ctx("reading module dir", &dir)?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    index.insert(normalize(stem), path.clone());
                } else if name.ends_with(".ko.xz") || name.ends_with(".ko.zst") {
                    let stem = name.split(".ko").next().unwrap_or(name);
                    index.entry(normalize(stem)).or_insert(path.clone());
                }
            }
        }
    }
    let builtin: HashSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| normalize(f.trim_end_matches(".ko")))
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Depth-first, dependencies before dependents; `visiting` catches cycles.
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        visiting: &mut Vec<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let name = normalize(name);
        if seen.contains(&name) || builtin.contains(&name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            return Err(invalid(format!("module dependency cycle at {name}")));
        }
        let path = index.get(&name).ok_or_else(|| {
            invalid(format!(
                "kernel module {name} is neither in the package nor built in"
            ))
        })?;
        let bytes = read_module(path)?;
        visiting.push(name.clone());
        for (k, v) in modinfo(&bytes)? {
            if k == "depends" {
                for dep in v.split(',').filter(|d| !d.is_empty()) {
                    visit(dep, index, builtin, seen, visiting, order)?;
                }
            }
        }
        visiting.pop();
        seen.insert(name);
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &builtin, &mut seen, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_rejects_garbage() {
        assert!(modinfo(b"not an elf").is_err());
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x28] = 0xff; // section table far outside the file
        fake[0x3a] = 64;
        fake[0x3c] = 2;
        assert!(modinfo(&fake).is_err());
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("dm-verity"), "dm_verity");
    }
}

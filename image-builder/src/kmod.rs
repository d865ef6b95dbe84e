//! Kernel modules for the initrd, each after its dependencies. An installed kernel (the `debian`
//! profile's root, where the package's postinst ran `depmod`) has `modules.dep`, which is used as
//! is; an unpacked kernel package (the `tiny` profile) has none, so the dependencies come from each
//! module's own `.modinfo` `depends=` list, read from its ELF sections. Modules listed in
//! `modules.builtin` are part of the kernel and count as present.

use std::collections::{BTreeMap, BTreeSet, HashSet};
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

/// Where each module file is and what it depends on, plus the built-in modules, of one kernel's
/// module tree (`lib/modules/<version>`).
pub struct ModuleTree {
    /// Normalized name -> `.ko[.xz|.zst]` file.
    files: BTreeMap<String, PathBuf>,
    /// Normalized name -> dependencies (normalized names), from `modules.dep` when present.
    deps: Option<BTreeMap<String, Vec<String>>>,
    /// Normalized names of the modules built into the kernel.
    builtin: BTreeSet<String>,
}

/// The normalized module name of a path like `kernel/drivers/md/dm-verity.ko.xz`.
fn stem(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (name, _) = file.split_once(".ko")?;
    Some(normalize(name))
}

impl ModuleTree {
    /// Reads `moddir`: the files under `kernel/`, `modules.dep` if any, `modules.builtin`.
    pub fn open(moddir: &Path) -> Result<ModuleTree> {
        let mut files = BTreeMap::new();
        let mut stack = vec![moddir.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).ctx("reading module dir", &dir)? {
                let path = entry.ctx("reading module dir", &dir)?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    if name.ends_with(".ko")
                        || name.ends_with(".ko.xz")
                        || name.ends_with(".ko.zst")
                    {
                        if let Some(s) = stem(name) {
                            // A plain `.ko` wins over a compressed one of the same name.
                            if name.ends_with(".ko") {
                                files.insert(s, path.clone());
                            } else {
                                files.entry(s).or_insert(path.clone());
                            }
                        }
                    }
                }
            }
        }
        let dep_file = moddir.join("modules.dep");
        let deps = if dep_file.is_file() {
            let text = std::fs::read_to_string(&dep_file).ctx("reading modules.dep", &dep_file)?;
            let mut deps = BTreeMap::new();
            for line in text.lines() {
                let Some((module, list)) = line.split_once(':') else {
                    continue;
                };
                let Some(name) = stem(module) else {
                    continue;
                };
                // modules.dep is authoritative for where a module lives.
                let path = moddir.join(module.trim());
                if path.is_file() {
                    files.insert(name.clone(), path);
                }
                deps.insert(name, list.split_whitespace().filter_map(stem).collect());
            }
            Some(deps)
        } else {
            None
        };
        let builtin = std::fs::read_to_string(moddir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(stem)
            .collect();
        Ok(ModuleTree {
            files,
            deps,
            builtin,
        })
    }

    /// Whether the kernel has `name` built in.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Whether `modules.dep` was found (else `.modinfo` gives the dependencies).
    pub fn has_modules_dep(&self) -> bool {
        self.deps.is_some()
    }

    /// The direct dependencies of a module file.
    fn depends(&self, name: &str, path: &Path) -> Result<Vec<String>> {
        if let Some(deps) = &self.deps {
            if let Some(d) = deps.get(name) {
                return Ok(d.clone());
            }
        }
        Ok(modinfo(&read_module(path)?)?
            .into_iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(normalize)
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// The `.ko` files to load for `wanted`, each after its dependencies, in a stable order.
    /// Built-in modules are skipped; a module that is neither a file nor built in is an error
    /// naming every such module.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<PathBuf>> {
        let missing: Vec<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|w| !self.is_builtin(w) && !self.files.contains_key(&normalize(w)))
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "kernel modules neither in the kernel's module tree nor built in: {}",
                missing.join(", ")
            )));
        }
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for w in wanted {
            self.visit(w, &mut seen, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    // Depth-first, dependencies before dependents; `visiting` catches cycles.
    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        visiting: &mut Vec<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let name = normalize(name);
        if seen.contains(&name) || self.builtin.contains(&name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            return Err(invalid(format!("module dependency cycle at {name}")));
        }
        let path = self.files.get(&name).ok_or_else(|| {
            invalid(format!(
                "kernel module {name} (a dependency) is neither in the module tree nor built in"
            ))
        })?;
        visiting.push(name.clone());
        for dep in self.depends(&name, path)? {
            self.visit(&dep, seen, visiting, order)?;
        }
        visiting.pop();
        seen.insert(name);
        order.push(path.clone());
        Ok(())
    }
}

/// Resolves `wanted` module names against the module tree `moddir` (`lib/modules/<version>`):
/// returns the `.ko` files to load, each after its dependencies, in a stable order. Modules that
/// `modules.builtin` lists are skipped (they need no loading).
pub fn resolve(moddir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>> {
    ModuleTree::open(moddir)?.resolve(wanted)
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
    fn modules_dep_orders_dependencies_and_builtins_count_as_present() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for f in [
            "kernel/drivers/scsi/hv_storvsc.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/scsi/scsi_common.ko",
            "kernel/drivers/hv/hv_vmbus.ko",
        ] {
            std::fs::create_dir_all(m.join(f).parent().unwrap()).unwrap();
            std::fs::write(m.join(f), b"not read: modules.dep gives the dependencies").unwrap();
        }
        std::fs::write(
            m.join("modules.dep"),
            "kernel/drivers/scsi/hv_storvsc.ko: kernel/drivers/scsi/scsi_mod.ko \
             kernel/drivers/scsi/scsi_common.ko kernel/drivers/hv/hv_vmbus.ko\n\
             kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
             kernel/drivers/scsi/scsi_common.ko:\nkernel/drivers/hv/hv_vmbus.ko:\n",
        )
        .unwrap();
        std::fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/nvme/host/nvme.ko\n",
        )
        .unwrap();
        let tree = ModuleTree::open(m).unwrap();
        assert!(tree.has_modules_dep());
        let names: Vec<String> = tree
            .resolve(&["nvme".into(), "hv_storvsc".into(), "scsi-mod".into()])
            .unwrap()
            .iter()
            .map(|p| plain_name(p).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "scsi_common.ko",
                "scsi_mod.ko",
                "hv_vmbus.ko",
                "hv_storvsc.ko"
            ]
        );
        let err = tree
            .resolve(&["gve".into(), "nvme".into(), "ena".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gve, ena"), "{err}");
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("dm-verity"), "dm_verity");
    }
}

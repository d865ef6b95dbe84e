//! The initrd: the repository's `initrd/` tree (its `/init` script) plus generated parts: busybox
//! with its applet links, `veritysetup` with its shared-library closure, and the kernel modules
//! the init loads in dependency order (listed in `/etc/cvm-modules`) with the kernel's
//! `modules.builtin` beside them. Written as a reproducible,
//! uncompressed newc cpio.

use std::path::{Path, PathBuf};

use crate::cpio::{Archive, Entry};
use crate::error::{invalid, IoContext, Result};
use crate::tree;

/// Inputs of the initrd.
pub struct InitrdInputs<'a> {
    /// The repository's `initrd/` directory; must contain an executable `init`.
    pub base: &'a Path,
    pub busybox: &'a Path,
    pub veritysetup: &'a Path,
    /// `.ko` files in load order.
    pub modules: &'a [PathBuf],
    /// The kernel's `modules.builtin`, carried as `/lib/modules/modules.builtin` so the initrd
    /// itself tells which drivers it has (file or built in).
    pub builtin: Option<&'a Path>,
    pub epoch: u64,
}

/// Builds the initrd bytes.
pub fn build(inp: &InitrdInputs) -> Result<Vec<u8>> {
    if !inp.base.join("init").is_file() {
        return Err(invalid(format!(
            "{} has no init script",
            inp.base.display()
        )));
    }
    let stage = tempfile::tempdir().ctx("creating initrd staging dir", std::env::temp_dir())?;
    let root = stage.path();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "newroot",
        "tmp",
        "etc",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(d)).ctx("creating initrd dir", root.join(d))?;
    }
    tree::copy_file(inp.busybox, &root.join("bin/busybox"))?;
    tree::busybox_links(inp.busybox, root)?;
    tree::copy_with_libs(inp.veritysetup, root, Path::new("/usr/sbin/veritysetup"))?;
    let mut list = String::new();
    for m in inp.modules {
        let name = crate::kmod::plain_name(m)
            .ok_or_else(|| invalid(format!("odd module path {}", m.display())))?;
        let target = root.join("lib/modules").join(&name);
        std::fs::write(&target, crate::kmod::read_module(m)?).ctx("writing module", &target)?;
        list.push_str(&name);
        list.push('\n');
    }
    std::fs::write(root.join("etc/cvm-modules"), list).ctx("writing module list", root)?;
    if let Some(b) = inp.builtin.filter(|b| b.is_file()) {
        tree::copy_file(b, &root.join("lib/modules/modules.builtin"))?;
    }
    tree::copy_overlay(inp.base, root)?;

    let mut a = Archive::new();
    a.add_tree(root)?;
    a.add(
        "dev/console",
        Entry::CharDev {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );
    let mut out = Vec::new();
    a.write(&mut out, inp.epoch).ctx("writing initrd", root)?;
    Ok(out)
}

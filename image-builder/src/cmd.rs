//! Running external tools (mkfs.erofs, mtools, apt-get, qemu-img...) with errors that carry the
//! command line and the tool's own message.

use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a non-zero exit becomes an [`Error::Tool`] with stderr's tail.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let line = format!(
        "{tool} {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: tool.clone(),
        detail: format!(
            "cannot start `{line}`: {e} (is it installed? see scripts/install-test-deps.sh)"
        ),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Tool {
            tool,
            detail: format!("`{line}` exited with {}: {}", out.status, tail.join("\n")),
        });
    }
    Ok(out)
}

/// Runs `cmd` and returns its stdout as text.
pub(crate) fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

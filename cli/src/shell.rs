//! `cvm-cli completions SHELL` and `cvm-cli man`: generated from the command definition itself,
//! so they never drift from the flags the binary accepts.

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `cvm-cli.1` and one `cvm-cli-SUBCOMMAND.1` per subcommand into this folder instead
    /// of printing the main page.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    let name = command.get_name().to_owned();
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, name, &mut stdout);
    stdout.flush().context("writing the completion script")
}

pub fn man(args: ManArgs, command: clap::Command) -> Result<()> {
    let Some(dir) = args.out_dir else {
        let mut stdout = std::io::stdout().lock();
        clap_mangen::Man::new(command)
            .render(&mut stdout)
            .context("writing the man page")?;
        return stdout.flush().context("writing the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    crate::output::progress(format_args!("man pages written to {}", dir.display()));
    Ok(())
}

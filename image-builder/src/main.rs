//! `cvm-image`: builds reproducible dm-verity UKI disk images (see docs/image.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use image_builder::verity;

#[derive(Parser)]
#[command(
    name = "cvm-image",
    version,
    about = "Build reproducible confidential-VM disk images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a dm-verity hash tree for DATA into HASH (like `veritysetup format`).
    Verity {
        data: PathBuf,
        hash: PathBuf,
        /// Salt in hex.
        #[arg(long)]
        salt: String,
        /// Superblock UUID (textual form).
        #[arg(long)]
        uuid: String,
        /// Hashing threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn parse_uuid(s: &str) -> anyhow::Result<[u8; 16]> {
    let bytes = hex::decode(s.replace('-', "")).context("UUID is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("UUID must be 16 bytes"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Verity {
            data,
            hash,
            salt,
            uuid,
            threads,
        } => {
            let params = verity::VerityParams::new(
                hex::decode(&salt).context("salt is not hex")?,
                parse_uuid(&uuid)?,
            );
            let tree = verity::format(
                &data,
                &hash,
                &params,
                threads.unwrap_or_else(verity::default_threads),
            )?;
            println!("Root hash:\t{}", hex::encode(tree.root_hash));
            println!("Data blocks:\t{}", tree.data_blocks);
        }
    }
    Ok(())
}

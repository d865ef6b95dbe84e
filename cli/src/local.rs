//! `cvm-cli tpm-ak`: the attestation key the agent will create on a TPM. `deploy-local` itself
//! is a deploy like the clouds' (`deploy/local/`).

use anyhow::Result;
use clap::Args;
use cvm_attestation::encoding::encode_base64;

/// Arguments of `cvm-cli tpm-ak`.
#[derive(Debug, Args)]
pub struct TpmAkArgs {
    /// The TPM, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    #[arg(long)]
    tcti: String,
}

/// The attestation key the agent will create on this TPM (TPMT_PUBLIC, base64): run it on a TPM
/// you created, before any guest uses it, and pin the result with `verify --trusted-ak`.
pub fn tpm_ak(args: TpmAkArgs) -> Result<()> {
    let ak = encode_base64(&crate::deploy::local::derive_ak(&args.tcti)?);
    if crate::output::json() {
        return crate::output::print_json(&serde_json::json!({ "ak": ak }));
    }
    println!("{ak}");
    Ok(())
}

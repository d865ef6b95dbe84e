//! `cvm-cli golden`: the golden measurement computed offline, from the image build's predicted
//! PCRs and the workload folder, so a verifier never has to trust a running VM for it.

use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::{
    predicted_pcrs, GoldenMeasurement, GoldenSnp, GoldenWorkload, GOLDEN_VERSION,
};
use cvm_attestation::workload::{archived_images, WorkloadFolder};
use cvm_attestation::{Sha256Digest, Sha384Digest};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  cvm-cli golden --measurements out/tiny/measurements.json --workload workload \
    --token-file token --out golden.json"
)]
pub struct GoldenArgs {
    /// The workload folder (docker-compose.yml, config/, image archives).
    #[arg(long, default_value = "workload")]
    workload: PathBuf,
    /// The image build's measurements.json (its predicted PCRs become golden values).
    #[arg(long)]
    measurements: Option<PathBuf>,
    /// The agent's API token file: its SHA-256 is part of the workload measurement.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Image IDs for images not shipped as archives in the folder: REFERENCE=sha256:HEX.
    #[arg(long = "image", value_name = "REF=ID")]
    images: Vec<String>,
    /// Platform the golden values are for (checked against the evidence).
    #[arg(long, value_parser = ["azure", "gcp", "aws", "qemu"])]
    cloud: Option<String>,
    #[arg(long, value_parser = ["sev-snp", "tdx", "none"], requires = "cloud")]
    tee: Option<String>,
    /// Allowed SEV-SNP launch measurements (hex, 48 bytes); repeatable.
    #[arg(long = "snp-measurement", value_name = "HEX")]
    snp_measurements: Vec<String>,
    /// Also allow the SEV-SNP launch digest computed from this firmware (see
    /// `cvm-cli snp-launch-digest --help` for the other --snp-* inputs).
    #[arg(long = "snp-ovmf", value_name = "OVMF.fd")]
    snp_ovmf: Option<PathBuf>,
    #[arg(long = "snp-kernel", value_name = "UKI", requires = "snp_ovmf")]
    snp_kernel: Option<PathBuf>,
    #[arg(long = "snp-vcpus", default_value_t = 1, requires = "snp_ovmf")]
    snp_vcpus: u32,
    #[arg(
        long = "snp-vcpu-type",
        default_value = "EPYC-v4",
        requires = "snp_ovmf"
    )]
    snp_vcpu_type: String,
    /// Accept a workload replaced after boot through /update-workload.
    #[arg(long)]
    allow_updates: bool,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: GoldenArgs) -> Result<()> {
    let golden = compute(&args)?;
    let text = serde_json::to_string_pretty(&golden)? + "\n";
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "golden measurement written to {} ({} PCRs, workload PCR 23 = {})",
                path.display(),
                golden.pcrs.len(),
                golden
                    .workload
                    .as_ref()
                    .map(|w| w.pcr23().to_hex())
                    .unwrap_or_default()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn compute(args: &GoldenArgs) -> Result<GoldenMeasurement> {
    let folder = WorkloadFolder::read(&args.workload)
        .with_context(|| format!("workload {}", args.workload.display()))?;
    let mut ids = BTreeMap::new();
    for entry in std::fs::read_dir(&args.workload)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tar") {
            let file = std::fs::File::open(&path)?;
            for image in archived_images(std::io::BufReader::new(file))
                .with_context(|| format!("{}", path.display()))?
            {
                for tag in image.tags {
                    ids.insert(tag, image.image_id.clone());
                }
            }
        }
    }
    for pair in &args.images {
        let (reference, id) = pair
            .split_once('=')
            .with_context(|| format!("--image {pair:?}: expected REF=sha256:HEX"))?;
        ids.insert(reference.to_owned(), id.to_owned());
    }
    let token_hash = match &args.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(Sha256Digest::of(token.trim().as_bytes()))
        }
        None => None,
    };
    let events = folder.events(&ids, token_hash)?;
    let pcrs = match &args.measurements {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            predicted_pcrs(&bytes).with_context(|| format!("{}", path.display()))?
        }
        None => BTreeMap::new(),
    };
    let platform = match (&args.cloud, &args.tee) {
        (Some(cloud), tee) => Some(Platform {
            cloud: serde_json::from_value::<Cloud>(cloud.as_str().into())?,
            tee: serde_json::from_value::<Tee>(tee.as_deref().unwrap_or("none").into())?,
        }),
        (None, Some(_)) => bail!("--tee needs --cloud"),
        (None, None) => None,
    };
    let mut snp_measurements = args
        .snp_measurements
        .iter()
        .map(|m| Sha384Digest::from_hex(m).with_context(|| format!("--snp-measurement {m}")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(ovmf) = &args.snp_ovmf {
        let digest = crate::snp_launch::launch_digest(&crate::snp_launch::LaunchInputs {
            ovmf: ovmf.clone(),
            kernel: args.snp_kernel.clone(),
            initrd: None,
            append: None,
            vcpus: args.snp_vcpus,
            vcpu_type: args.snp_vcpu_type.clone(),
            guest_features: 1,
        })?;
        snp_measurements.push(Sha384Digest::from_hex(&hex::encode(digest))?);
    }
    let snp = if snp_measurements.is_empty() {
        None
    } else {
        Some(GoldenSnp {
            measurements: snp_measurements,
            vmpls: vec![0],
            ..GoldenSnp::default()
        })
    };
    Ok(GoldenMeasurement {
        version: GOLDEN_VERSION,
        platform,
        pcrs,
        workload: Some(GoldenWorkload {
            events,
            allow_updates: args.allow_updates,
        }),
        snp,
        tdx: None,
    })
}

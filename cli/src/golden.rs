//! `cvm-cli golden`: the golden measurement computed offline, from the image build's predicted
//! PCRs and the workload folder, so a verifier never has to trust a running VM for it.

use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::{
    predicted_boot_events, predicted_pcrs, AllowedWorkload, GoldenMeasurement, GoldenSnp,
    GoldenWorkload, GOLDEN_VERSION,
};
use cvm_attestation::snp::policy::{default_minimum_tcb, SnpProduct, Tcb};
use cvm_attestation::workload::data::{key_commitment, SealRoot};
use cvm_attestation::workload::token::parse_salt;
use cvm_attestation::workload::{
    archived_images, DataState, TokenCommitment, WorkloadEvent, WorkloadFolder,
};
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
    /// The image build's measurements.json: its predicted PCRs (SHA-256 and SHA-384) and the boot
    /// events the build determines (UKI, command line, initrd, UKI sections) become golden values.
    #[arg(long)]
    measurements: Option<PathBuf>,
    /// The agent's API token file: its salted HMAC is part of the workload measurement.
    #[arg(long, requires = "token_salt")]
    token_file: Option<PathBuf>,
    /// The salt of the agent's api-token event (random per boot, public): 64 hex digits, or a
    /// file holding the agent's workload log (GET /eventlog) or evidence to take it from.
    #[arg(long, value_name = "HEX|FILE", requires = "token_file")]
    token_salt: Option<String>,
    /// How the image's agent protects /data (docs/data-at-rest.md), part of the workload
    /// measurement: `ephemeral` (the production image's default), `pushed` (with
    /// --data-key-file), `sealed` (kept by the TEE: --sealed-to, or from --cloud/--tee), or
    /// `none` (test images whose agent does not manage /data).
    #[arg(
        long,
        value_name = "ephemeral|pushed|sealed|none",
        default_value = "none"
    )]
    data_unlock: String,
    /// The pushed data key (32 or 64 bytes): the measurement carries its commitment.
    #[arg(long)]
    data_key_file: Option<PathBuf>,
    /// What keeps a sealed key: `snp-derived-key` (SEV-SNP outside Azure) or `azure-vtpm`
    /// (Azure's paravisor vTPM). Default: from --cloud and --tee.
    #[arg(long, value_name = "snp-derived-key|azure-vtpm")]
    sealed_to: Option<String>,
    /// Accept a compose bind mount of this host path (outside the workload folder, so its
    /// content is not measured); repeatable.
    #[arg(long = "allow-host-mount", value_name = "PATH")]
    allow_host_mounts: Vec<String>,
    /// Also accept this workload measurement for any generation since boot: another golden
    /// file (its workload and what it allows) or a measurement's digest (64 hex); repeatable.
    #[arg(long = "allow-measurement", value_name = "GOLDEN.json|HEX")]
    allow_measurements: Vec<String>,
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
    /// Minimum SEV-SNP TCB: a product (milan, genoa, turin: AMD's published minimum, see
    /// docs/golden.md) or components `bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]`. Without
    /// it the verifier applies AMD's published minimum for the product that signed the report.
    #[arg(long = "min-tcb", value_name = "PRODUCT|COMPONENTS")]
    min_tcb: Option<String>,
    /// Accept the same workload measured again after boot (several generations, each equal to
    /// this one); another workload needs --allow-measurement.
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
            written(path, &golden)?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Says where the golden went: a progress line, or with `--json` the result on stdout.
fn written(path: &std::path::Path, golden: &GoldenMeasurement) -> Result<()> {
    let pcr23 = golden.workload.as_ref().map(|w| w.pcr23().to_hex());
    if crate::output::json() {
        let pcrs = golden.pcrs.len();
        let result = serde_json::json!({ "written": path, "pcrs": pcrs, "workload_pcr23": pcr23 });
        return crate::output::print_json(&result);
    }
    crate::output::progress(format_args!(
        "golden measurement written to {} ({} PCRs, workload PCR 23 = {})",
        path.display(),
        golden.pcrs.len(),
        pcr23.unwrap_or_default()
    ));
    Ok(())
}

fn compute(args: &GoldenArgs) -> Result<GoldenMeasurement> {
    let workload = workload(args)?;
    // The build's predicted PCR values, and its own boot events (`boot.events`), which survive
    // firmware that adds events of its own.
    let (mut pcrs, boot_events) = match &args.measurements {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let context = || format!("{}", path.display());
            (
                predicted_pcrs(&bytes).with_context(context)?,
                predicted_boot_events(&bytes).with_context(context)?,
            )
        }
        None => (BTreeMap::new(), Vec::new()),
    };
    let platform = match (&args.cloud, &args.tee) {
        (Some(cloud), tee) => Some(Platform {
            cloud: serde_json::from_value::<Cloud>(cloud.as_str().into())?,
            tee: serde_json::from_value::<Tee>(tee.as_deref().unwrap_or("none").into())?,
        }),
        (None, Some(_)) => bail!("--tee needs --cloud"),
        (None, None) => None,
    };
    // A cloud's firmware measures boot applications of its own into PCR 4, so the value predicted
    // from our build alone holds only under our OVMF; there the build's boot events pin the UKI.
    if platform.is_some_and(|p| p.cloud != Cloud::Qemu)
        && !boot_events.is_empty()
        && pcrs.remove(&4).is_some()
    {
        crate::output::progress(
            "golden: PCR 4's value is left out for a cloud (its firmware adds boot events); \
             the build's boot events pin the UKI there (boot.events)",
        );
    }
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
    let is_snp = platform.is_some_and(|p| p.tee == Tee::SevSnp);
    if platform.is_some_and(|p| p.cloud == Cloud::Qemu && p.tee == Tee::SevSnp)
        && snp_measurements.is_empty()
    {
        bail!(
            "a local SEV-SNP VM boots directly, so its launch digest pins the whole boot chain and \
             must be in the golden: pass --snp-ovmf OVMF.fd --snp-kernel UKI (or --snp-measurement HEX)"
        );
    }
    let minimum_tcb = args.min_tcb.as_deref().map(parse_min_tcb).transpose()?;
    let snp =
        (is_snp || !snp_measurements.is_empty() || minimum_tcb.is_some()).then(|| GoldenSnp {
            measurements: snp_measurements,
            minimum_tcb,
            vmpls: vec![0],
            ..GoldenSnp::default()
        });
    Ok(GoldenMeasurement {
        version: GOLDEN_VERSION,
        platform,
        pcrs,
        workload: Some(workload),
        snp,
        tdx: None,
        boot_events,
    })
}

/// The workload section: the folder's measurement (image IDs from its archives and `--image`,
/// the token's commitment under the agent's salt) and the other measurements allowed.
fn workload(args: &GoldenArgs) -> Result<GoldenWorkload> {
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
    check_host_mounts(&folder, &args.allow_host_mounts)?;
    let token = token_commitment(args)?;
    let events = folder.events_with_data(&ids, token.as_ref(), data_state(args)?)?;
    let allowed = args
        .allow_measurements
        .iter()
        .map(|value| allowed_measurements(value))
        .collect::<Result<Vec<_>>>()?
        .concat();
    Ok(GoldenWorkload {
        events,
        allow_updates: args.allow_updates,
        allowed,
        any: false,
    })
}

/// Refuses host paths the workload mounts from outside its folder unless `--allow-host-mount`
/// names them: their content is not measured. The agent's own API socket directory is its own.
fn check_host_mounts(folder: &WorkloadFolder, allowed: &[String]) -> Result<()> {
    for mount in &folder.host_mounts {
        if mount.is_agent_socket() || allowed.iter().any(|a| a == &mount.source) {
            continue;
        }
        bail!(
            "the workload mounts host path {:?} ({}), whose content is not measured; pass \
             --allow-host-mount {:?} if that is intended",
            mount.source,
            mount.uses.join(", "),
            mount.source
        );
    }
    Ok(())
}

/// The data-key event the agent will record (`--data-unlock`, `--data-key-file`).
fn data_state(args: &GoldenArgs) -> Result<Option<DataState>> {
    match (args.data_unlock.as_str(), &args.data_key_file) {
        ("none", None) => Ok(None),
        ("ephemeral", None) => Ok(Some(DataState::Ephemeral)),
        ("pushed", Some(path)) => {
            let key = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let commitment = key_commitment(&key)
                .with_context(|| format!("--data-key-file {}", path.display()))?;
            Ok(Some(DataState::Pushed(commitment)))
        }
        ("pushed", None) => {
            bail!("--data-unlock pushed needs --data-key-file (the key you will push)")
        }
        (_, Some(_)) => bail!("--data-key-file goes with --data-unlock pushed"),
        ("sealed", None) => Ok(Some(DataState::Sealed(seal_root(args)?))),
        (other, None) => {
            bail!("--data-unlock {other:?}: expected ephemeral, pushed, sealed or none")
        }
    }
}

/// What keeps a sealed key: `--sealed-to`, else what the agent picks on `--cloud`/`--tee`.
fn seal_root(args: &GoldenArgs) -> Result<SealRoot> {
    if let Some(root) = &args.sealed_to {
        return root
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--sealed-to {e}"));
    }
    match (args.cloud.as_deref(), args.tee.as_deref()) {
        (Some("azure"), Some("sev-snp")) => Ok(SealRoot::AzureVtpm),
        (Some(_), Some("sev-snp")) => Ok(SealRoot::SnpDerivedKey),
        _ => bail!(
            "--data-unlock sealed needs --sealed-to, or --cloud with --tee sev-snp: the agent \
             refuses sealed without a TEE-resident root (where the only TPM is the host's)"
        ),
    }
}

/// The api-token event's commitment: the token file's content (trimmed, as the agent reads it)
/// under the salt the agent published.
fn token_commitment(args: &GoldenArgs) -> Result<Option<TokenCommitment>> {
    let (Some(path), Some(salt)) = (&args.token_file, &args.token_salt) else {
        return Ok(None);
    };
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let salt = match parse_salt(salt) {
        Some(salt) => salt,
        None => salt_from_file(std::path::Path::new(salt))
            .with_context(|| format!("--token-salt {salt}"))?,
    };
    Ok(Some(TokenCommitment::new(salt, token.trim())))
}

/// The salt of the first api-token event in a workload log or in evidence carrying one.
fn salt_from_file(path: &std::path::Path) -> Result<[u8; 32]> {
    const MAX_BYTES: u64 = 64 << 20;
    let size = std::fs::metadata(path)
        .context("neither 64 hex digits nor a readable file")?
        .len();
    if size > MAX_BYTES {
        bail!("{} is larger than {MAX_BYTES} bytes", path.display());
    }
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let events = value
        .get("events")
        .or_else(|| value.pointer("/event_logs/workload/events"))
        .with_context(|| format!("{} holds no workload log", path.display()))?;
    let events: Vec<WorkloadEvent> = serde_json::from_value(events.clone())
        .with_context(|| format!("{}: workload events", path.display()))?;
    TokenCommitment::first_salt(&events).with_context(|| {
        format!(
            "{}: the workload log has no salted api-token event",
            path.display()
        )
    })
}

/// What one `--allow-measurement` adds: a digest, or another golden's workload measurement
/// together with the ones it allows.
fn allowed_measurements(value: &str) -> Result<Vec<AllowedWorkload>> {
    if value.len() == 64 {
        if let Ok(digest) = Sha256Digest::from_hex(value) {
            return Ok(vec![AllowedWorkload::Digest(digest)]);
        }
    }
    let bytes = std::fs::read(value).with_context(|| {
        format!("--allow-measurement {value}: neither 64 hex digits nor a file")
    })?;
    let golden = GoldenMeasurement::from_json(&bytes)
        .with_context(|| format!("--allow-measurement {value}"))?;
    let workload = golden
        .workload
        .filter(|w| !w.any)
        .with_context(|| format!("--allow-measurement {value}: the golden pins no workload"))?;
    let mut allowed = vec![AllowedWorkload::Events(workload.events)];
    allowed.extend(workload.allowed);
    Ok(allowed)
}

/// `--min-tcb`: a product's published minimum, or explicit components.
pub(crate) fn parse_min_tcb(text: &str) -> Result<Tcb> {
    if let Some(product) = SnpProduct::ALL
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(text))
    {
        return Ok(default_minimum_tcb(product));
    }
    let mut tcb = Tcb {
        bootloader: 0,
        tee: 0,
        snp: 0,
        microcode: 0,
        fmc: None,
    };
    for part in text.split(',') {
        let (name, value) = part.split_once('=').with_context(|| {
            format!("--min-tcb {text:?}: expected a product (milan, genoa, turin) or NAME=N,...")
        })?;
        let value = parse_u8(value.trim())
            .with_context(|| format!("--min-tcb {name}={value}: not a number from 0 to 255"))?;
        match name.trim() {
            "bootloader" => tcb.bootloader = value,
            "tee" => tcb.tee = value,
            "snp" => tcb.snp = value,
            "microcode" => tcb.microcode = value,
            "fmc" => tcb.fmc = Some(value),
            other => bail!(
                "--min-tcb: unknown component {other:?} (bootloader, tee, snp, microcode, fmc)"
            ),
        }
    }
    Ok(tcb)
}

fn parse_u8(text: &str) -> Option<u8> {
    match text.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        golden: GoldenArgs,
    }

    fn state(args: &[&str]) -> Result<Option<DataState>> {
        let cli = Cli::try_parse_from(["golden"].iter().chain(args))?;
        data_state(&cli.golden)
    }

    #[test]
    fn sealed_names_its_root_from_the_flag_or_the_platform() {
        let sealed = |root| Some(DataState::Sealed(root));
        let azure = [
            "--data-unlock",
            "sealed",
            "--cloud",
            "azure",
            "--tee",
            "sev-snp",
        ];
        assert_eq!(state(&azure).unwrap(), sealed(SealRoot::AzureVtpm));
        let gcp = [
            "--data-unlock",
            "sealed",
            "--cloud",
            "gcp",
            "--tee",
            "sev-snp",
        ];
        assert_eq!(state(&gcp).unwrap(), sealed(SealRoot::SnpDerivedKey));
        let named = ["--data-unlock", "sealed", "--sealed-to", "snp-derived-key"];
        assert_eq!(state(&named).unwrap(), sealed(SealRoot::SnpDerivedKey));
        for refused in [
            &["--data-unlock", "sealed", "--cloud", "gcp", "--tee", "none"][..],
            &["--data-unlock", "sealed"],
            &["--data-unlock", "sealed", "--sealed-to", "host-tpm"],
        ] {
            assert!(state(refused).is_err(), "{refused:?}");
        }
    }
}

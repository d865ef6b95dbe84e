//! `cvm-cli snp-launch-digest` and `golden --snp-ovmf` against the reference calculator,
//! `sev-snp-measure`, on the same firmware (Debian's OVMF carries the SEV metadata both need).

mod common;

use std::process::Command;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn reference(vcpus: u32, vcpu_type: &str) -> String {
    let tool = format!("{}/bin/sev-snp-measure", test_support::EMULATOR_VENV);
    let output = Command::new(&tool)
        .args(["--mode", "snp", "--vcpus", &vcpus.to_string()])
        .args(["--vcpu-type", vcpu_type, "--ovmf", OVMF])
        .output()
        .unwrap_or_else(|error| panic!("{tool}: {error} (run scripts/install-test-deps.sh)"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn launch_digests_match_sev_snp_measure() {
    for (vcpus, vcpu_type) in [
        (1, "EPYC-v4"),
        (2, "EPYC-Milan"),
        (4, "EPYC-Genoa"),
        (16, "EPYC"),
    ] {
        let ours = common::cli(&[
            "snp-launch-digest",
            "--snp-ovmf",
            OVMF,
            "--snp-vcpus",
            &vcpus.to_string(),
            "--snp-vcpu-type",
            vcpu_type,
        ]);
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        assert_eq!(
            common::stdout(&ours).trim(),
            reference(vcpus, vcpu_type),
            "{vcpus} x {vcpu_type}"
        );
    }
}

#[test]
fn golden_values_carry_the_computed_digest() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload");
    std::fs::create_dir_all(workload.join("config")).unwrap();
    std::fs::write(
        workload.join("docker-compose.yml"),
        "services:\n  app:\n    image: localhost/app@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
    )
    .unwrap();
    let output = common::cli(&[
        "golden",
        "--workload",
        workload.to_str().unwrap(),
        "--image",
        "localhost/app@sha256:0000000000000000000000000000000000000000000000000000000000000000=sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "--snp-ovmf",
        OVMF,
        "--snp-vcpus",
        "2",
        "--snp-vcpu-type",
        "EPYC-Milan",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let golden: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        golden["snp"]["measurements"][0].as_str().unwrap(),
        reference(2, "EPYC-Milan")
    );
}

#[test]
fn unusable_inputs_are_refused_clearly() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kernel.path(), b"not really a UKI").unwrap();
    // Debian's OVMF has no SNP_KERNEL_HASHES section: a direct boot cannot be measured with it.
    let output = common::cli(&[
        "snp-launch-digest",
        "--snp-ovmf",
        OVMF,
        "--snp-kernel",
        kernel.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SNP_KERNEL_HASHES"), "{stderr}");

    let output = common::cli(&[
        "snp-launch-digest",
        "--snp-ovmf",
        kernel.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not an OVMF image"), "{stderr}");

    let output = common::cli(&[
        "snp-launch-digest",
        "--snp-ovmf",
        OVMF,
        "--snp-vcpu-type",
        "Skylake",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Skylake"));
}

/// Damaged firmware (random bytes written over the metadata and footer near the end, where the
/// parser looks) is refused with an error, never a crash.
#[test]
fn damaged_firmware_never_crashes() {
    let original = std::fs::read(OVMF).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("OVMF.fd");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..40 {
        let mut firmware = original.clone();
        let len = firmware.len();
        for _ in 0..1 + next() % 8 {
            let at = len - 1 - (next() as usize % 8192);
            firmware[at] = next() as u8;
        }
        std::fs::write(&path, &firmware).unwrap();
        let output = common::cli(&["snp-launch-digest", "--snp-ovmf", path.to_str().unwrap()]);
        assert!(
            matches!(output.status.code(), Some(0) | Some(2)),
            "{:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

//! `cvm-cli golden --measurements` writes the build's own boot events (`boot_events`, checked by
//! `boot.events`) beside its predicted PCR values: the UKI and the kernel the stub loads in PCR 4,
//! the command line and initrd in PCR 9, the sections in PCR 11; never the firmware's action and
//! separator.

use cvm_attestation::GoldenMeasurement;

mod common;
use common::cli;

/// A real `measurements.json` of a `tiny` build (SHA-256 only).
const MEASUREMENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../attestation/tests/fixtures/measurements-v1-sha256-only.json"
);

fn golden(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  app:\n    image: localhost/app:1\n",
    )
    .unwrap();
    let image = format!("localhost/app:1=sha256:{}", "c".repeat(64));
    let mut args = vec![
        "golden",
        "--workload",
        dir.to_str().unwrap(),
        "--image",
        &image,
    ];
    args.extend_from_slice(extra);
    let output = cli(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    GoldenMeasurement::from_json(&output.stdout).expect("the golden reads back");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn golden_writes_the_builds_boot_events_from_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let golden = golden(dir.path(), &["--measurements", MEASUREMENTS]);
    let events = golden["boot_events"].as_array().unwrap();
    assert_eq!(events.len(), 12, "{events:?}");
    assert_eq!(
        events[0],
        serde_json::json!({
            "pcr": 4,
            "sha256": "916424a0a409a7357259d46e68de1788494d8d9c0d91b25dfdef7df24d916bee",
            "description": "UKI"
        })
    );
    let described: Vec<(u64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["pcr"].as_u64().unwrap(),
                e["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        described[..5],
        [
            (4, "UKI"),
            (4, ".linux loaded by the stub"),
            (9, "LOADED_IMAGE::LoadOptions"),
            (9, "Linux initrd"),
            (11, ".linux (name)"),
        ]
    );
    // The firmware's own events are not the build's.
    let text = golden["boot_events"].to_string();
    for firmware in [
        "3d6772b4f84ed47595d72a2c4c5ffd15f5bb72c7507fe26f2aaee2c69d5633ba", // EV_EFI_ACTION
        "df3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119", // EV_SEPARATOR
    ] {
        assert!(!text.contains(firmware), "{text}");
    }
    // The predicted values are still there.
    let mut pcrs: Vec<u8> = golden["pcrs"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    pcrs.sort();
    assert_eq!(pcrs, [4, 9, 11, 12]);

    // Without a build there are none, and the key is left out.
    let golden = self::golden(dir.path(), &[]);
    assert!(golden.get("boot_events").is_none(), "{golden}");
}

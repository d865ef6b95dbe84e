//! Workload folders on disk: what is measured, what is refused, and image IDs from archives.

use cvm_attestation::workload::{archived_images, EventKind, WorkloadError, WorkloadFolder};
use std::collections::BTreeMap;
use std::fs;
use test_support::busybox_image_archive;

fn ids(reference: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(reference.to_owned(), format!("sha256:{}", "a".repeat(64)))])
}

#[test]
fn secrets_are_never_measured_and_config_is_in_byte_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("docker-compose.yml"),
        "services: {a: {image: x/y:1}}",
    )?;
    fs::create_dir_all(dir.path().join("config/sub"))?;
    fs::create_dir_all(dir.path().join("secrets"))?;
    for name in ["config/b", "config/a", "config/sub/c", "config/B"] {
        fs::write(dir.path().join(name), name)?;
    }
    fs::write(dir.path().join("secrets/token"), "hunter2")?;
    let before = WorkloadFolder::read(dir.path())?.events(&ids("x/y:1"), None)?;
    let names: Vec<&str> = before.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker-compose.yml",
            "config/B",
            "config/a",
            "config/b",
            "config/sub/c",
            "x/y:1",
            ""
        ]
    );

    fs::write(dir.path().join("secrets/token"), "changed")?;
    let after = WorkloadFolder::read(dir.path())?.events(&ids("x/y:1"), None)?;
    assert_eq!(before, after, "a secret changed the measurement");

    fs::write(dir.path().join("config/a"), "changed")?;
    let changed = WorkloadFolder::read(dir.path())?.events(&ids("x/y:1"), None)?;
    assert_ne!(before[2].payload_digest, changed[2].payload_digest);
    Ok(())
}

#[test]
fn refuses_symlinks_missing_images_and_env_files_in_secrets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("docker-compose.yml"),
        "services: {a: {image: x/y:1}}",
    )?;
    fs::create_dir_all(dir.path().join("config"))?;
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("config/passwd"))?;
    let err = WorkloadFolder::read(dir.path()).unwrap_err();
    assert!(matches!(err, WorkloadError::Symlink(_)), "{err}");
    fs::remove_file(dir.path().join("config/passwd"))?;

    let err = WorkloadFolder::read(dir.path())?
        .events(&BTreeMap::new(), None)
        .unwrap_err();
    assert!(err.to_string().contains("x/y:1"), "{err}");

    fs::write(
        dir.path().join("docker-compose.yml"),
        "services: {a: {image: x/y:1, env_file: secrets/app.env}}",
    )?;
    let err = WorkloadFolder::read(dir.path()).unwrap_err();
    assert!(
        matches!(err, WorkloadError::EnvFileInSecrets { .. }),
        "{err}"
    );

    let empty = tempfile::tempdir()?;
    let err = WorkloadFolder::read(empty.path()).unwrap_err();
    assert!(matches!(err, WorkloadError::NoCompose(_)), "{err}");
    Ok(())
}

#[test]
fn image_events_carry_the_id_and_tokens_are_bound() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("docker-compose.yml"),
        "services: {a: {image: x/y:1}}",
    )?;
    let folder = WorkloadFolder::read(dir.path())?;
    let token = cvm_attestation::Sha256Digest::of(b"token");
    let events = folder.events(&ids("x/y:1"), Some(token))?;
    assert_eq!(events[1].kind, EventKind::Image);
    assert_eq!(
        events[1].payload.as_deref(),
        Some(ids("x/y:1")["x/y:1"].as_str())
    );
    assert_eq!(events[2].kind, EventKind::ApiToken);
    assert_eq!(events[2].payload_digest, token);

    let bad = BTreeMap::from([("x/y:1".to_owned(), "latest".to_owned())]);
    assert!(matches!(
        folder.events(&bad, None),
        Err(WorkloadError::BadImageId { .. })
    ));
    Ok(())
}

#[test]
fn archive_image_ids_are_computed_from_content() -> anyhow::Result<()> {
    let archive = busybox_image_archive("localhost/t/a:1", &["sh"], &[])?;
    let images = archived_images(archive.bytes.as_slice())?;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].image_id, archive.image_id);
    assert_eq!(images[0].tags, ["localhost/t/a:1"]);

    let other = busybox_image_archive("localhost/t/a:1", &["sh"], &[("etc/x", b"1")])?;
    assert_ne!(
        archived_images(other.bytes.as_slice())?[0].image_id,
        archive.image_id
    );

    assert!(archived_images(&b"not a tar"[..]).is_err());
    Ok(())
}

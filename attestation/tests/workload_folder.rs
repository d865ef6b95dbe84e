//! Workload folders on disk: what is measured, what is refused, and image IDs from archives.

use cvm_attestation::golden::{AllowedWorkload, GoldenMeasurement};
use cvm_attestation::workload::{
    archived_images, differences, EventKind, LogError, TokenCommitment, WorkloadError,
    WorkloadFolder, WorkloadLog,
};
use cvm_attestation::Sha256Digest;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use test_support::busybox_image_archive;

/// Fresh random bytes: every run measures data no earlier run saw.
fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    bytes
}

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
    let token = hex::encode(random::<24>());
    let (salt_a, salt_b) = (random::<32>(), random::<32>());
    let commitment = TokenCommitment::new(salt_a, &token);
    let events = folder.events(&ids("x/y:1"), Some(&commitment))?;
    assert_eq!(events[1].kind, EventKind::Image);
    assert_eq!(
        events[1].payload.as_deref(),
        Some(ids("x/y:1")["x/y:1"].as_str())
    );
    assert_eq!(events[2].kind, EventKind::ApiToken);
    assert_eq!(events[2].payload_digest, commitment.digest);
    // The salt travels in the event; the bare hash a guess could be tested against does not.
    assert_eq!(events[2].payload, Some(hex::encode(salt_a)));
    assert_ne!(events[2].payload_digest, Sha256Digest::of(token.as_bytes()));
    // The same token under another salt: another digest; the log stays structurally valid.
    let other = TokenCommitment::new(salt_b, &token);
    assert_ne!(other.digest, commitment.digest);
    assert_eq!(TokenCommitment::new(salt_a, &token), commitment);
    WorkloadLog::from_events(events.clone()).generations()?;
    let mut forged = events;
    forged[2].payload = Some("not a salt".into());
    assert!(matches!(
        WorkloadLog::from_events(forged).generations(),
        Err(LogError::BadSalt { index: 2, .. })
    ));

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

/// A workload whose service bind-mounts `./app.py` and more, with `app` as the code.
fn bind_mount_workload(dir: &Path, app: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir.join("lib/deep"))?;
    fs::create_dir_all(dir.join("secrets"))?;
    fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  app:\n    image: x/y:1\n    command: [python3, /app/app.py]\n    volumes:\n      - ./app.py:/app/app.py:ro\n      - ./lib:/app/lib\n      - ./secrets:/run/secrets:ro\n      - state:/state\n      - {type: tmpfs, target: /tmp}\nvolumes:\n  state: {}\n",
    )?;
    fs::write(dir.join("app.py"), app)?;
    fs::write(dir.join("lib/deep/util.py"), "def f(): pass\n")?;
    fs::write(dir.join("README.md"), "docs\n")?;
    fs::write(dir.join("secrets/key"), hex::encode(random::<16>()))?;
    Ok(())
}

#[test]
fn every_file_a_bind_mount_can_reach_is_measured() -> anyhow::Result<()> {
    // The attack: two folders that differ only in the bind-mounted code.
    let code = format!("print({:?})\n", hex::encode(random::<8>()));
    let (honest, evil) = (tempfile::tempdir()?, tempfile::tempdir()?);
    bind_mount_workload(honest.path(), &code)?;
    bind_mount_workload(
        evil.path(),
        &format!("{code}import os; os.system('evil')\n"),
    )?;
    let measure = |dir: &Path| WorkloadFolder::read(dir)?.events(&ids("x/y:1"), None);
    let (a, b) = (measure(honest.path())?, measure(evil.path())?);
    let named: Vec<(EventKind, &str)> = a.iter().map(|e| (e.kind, e.name.as_str())).collect();
    assert_eq!(
        named,
        [
            (EventKind::ComposeFile, "docker-compose.yml"),
            (EventKind::File, "README.md"),
            (EventKind::File, "app.py"),
            (EventKind::File, "lib/deep/util.py"),
            (EventKind::Image, "x/y:1"),
            (EventKind::Separator, ""),
        ]
    );
    assert_ne!(
        cvm_attestation::workload::replay(&a),
        cvm_attestation::workload::replay(&b),
        "two workloads differing in their code got the same golden value"
    );
    let diff = differences(&a, &b);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].starts_with("file \"app.py\" changed"), "{diff:?}");
    // Secrets still never count.
    fs::write(evil.path().join("secrets/key"), "other")?;
    assert_eq!(measure(evil.path())?, b);
    Ok(())
}

#[test]
fn unmeasurable_files_anywhere_in_the_folder_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bind_mount_workload(dir.path(), "pass\n")?;
    let root = dir.path();
    let refused = |setup: &dyn Fn() -> std::io::Result<()>,
                   undo: &dyn Fn() -> std::io::Result<()>| {
        setup().unwrap();
        let err = WorkloadFolder::read(root).unwrap_err();
        undo().unwrap();
        err
    };
    let err = refused(
        &|| std::os::unix::fs::symlink("/etc/passwd", root.join("lib/passwd")),
        &|| fs::remove_file(root.join("lib/passwd")),
    );
    assert!(matches!(err, WorkloadError::Symlink(_)), "{err}");
    let err = refused(
        &|| {
            fs::rename(root.join("secrets"), root.join("real-secrets"))?;
            std::os::unix::fs::symlink("/etc", root.join("secrets"))
        },
        &|| {
            fs::remove_file(root.join("secrets"))?;
            fs::rename(root.join("real-secrets"), root.join("secrets"))
        },
    );
    assert!(matches!(err, WorkloadError::Symlink(_)), "{err}");
    let fifo = root.join("lib/pipe");
    let err = refused(
        &|| {
            let status = std::process::Command::new("mkfifo").arg(&fifo).status()?;
            status
                .success()
                .then_some(())
                .ok_or_else(|| std::io::Error::other("mkfifo failed"))
        },
        &|| fs::remove_file(&fifo),
    );
    assert!(matches!(err, WorkloadError::SpecialFile(_)), "{err}");
    let deep: std::path::PathBuf = (0..40).map(|i| format!("d{i}")).collect();
    let err = refused(&|| fs::create_dir_all(root.join(&deep)), &|| {
        fs::remove_dir_all(root.join("d0"))
    });
    assert!(matches!(err, WorkloadError::TooDeep(_)), "{err}");
    let err = refused(
        &|| (0..=2048).try_for_each(|i| fs::write(root.join(format!("lib/f{i}")), "x")),
        &|| (0..=2048).try_for_each(|i| fs::remove_file(root.join(format!("lib/f{i}")))),
    );
    assert!(matches!(err, WorkloadError::TooManyFiles), "{err}");
    // Everything undone: the folder measures again.
    WorkloadFolder::read(root)?;
    Ok(())
}

#[test]
fn host_mounts_are_measured_by_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let target = format!("/data-{}", hex::encode(random::<4>()));
    fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "services:\n  a:\n    image: x/y:1\n    volumes:\n      - /etc:{target}:ro\n      - /var/run/docker.sock:/var/run/docker.sock\n      - ../sibling:/s\n      - named:/n\nvolumes:\n  named: {{}}\n"
        ),
    )?;
    let events = WorkloadFolder::read(dir.path())?.events(&ids("x/y:1"), None)?;
    let mounts: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.kind == EventKind::HostMount)
        .map(|e| (e.name.as_str(), e.payload.as_deref()))
        .collect();
    let etc_use = format!("service a: {target} (ro)");
    assert_eq!(
        mounts,
        [
            ("../sibling", Some("service a: /s (rw)")),
            ("/etc", Some(etc_use.as_str())),
            (
                "/var/run/docker.sock",
                Some("service a: /var/run/docker.sock (rw)")
            ),
        ]
    );
    // The payload is measured: another container path is another measurement.
    WorkloadLog::from_events(events).generations()?;
    Ok(())
}

#[test]
fn golden_workload_documents_old_new_and_any() -> anyhow::Result<()> {
    let events =
        WorkloadLog::from_events(vec![cvm_attestation::workload::WorkloadEvent::separator()]);
    let events_json = serde_json::to_value(&events.events)?;
    let old = serde_json::json!({"version": 1, "workload": {"events": events_json, "allow_updates": true}});
    let golden = GoldenMeasurement::from_json(old.to_string().as_bytes())?;
    let workload = golden.workload.unwrap();
    assert!(workload.allow_updates && workload.allowed.is_empty() && !workload.any);

    let digest = Sha256Digest(random::<32>());
    let new = serde_json::json!({"version": 1, "workload": {
        "events": events_json,
        "allowed": [{"events": events_json}, {"digest": digest.to_hex()}],
    }});
    let workload = GoldenMeasurement::from_json(new.to_string().as_bytes())?
        .workload
        .unwrap();
    assert_eq!(workload.allowed[1], AllowedWorkload::Digest(digest));
    assert_eq!(
        serde_json::to_value(&workload)?,
        new["workload"],
        "writes what it reads"
    );

    let any = GoldenMeasurement::from_json(br#"{"version": 1, "workload": "any"}"#)?;
    assert!(any.workload.as_ref().unwrap().any);
    assert_eq!(serde_json::to_value(&any)?["workload"], "any");
    for bad in [
        r#"{"version": 1, "workload": "anything"}"#,
        r#"{"version": 1, "workload": {"events": [], "allowed": [{"hash": "00"}]}}"#,
        r#"{"version": 1, "workload": {"events": [], "alowed": []}}"#,
    ] {
        assert!(
            GoldenMeasurement::from_json(bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
    Ok(())
}

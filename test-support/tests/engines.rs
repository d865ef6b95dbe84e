//! The container fixtures are real: on both engines, through `bollard`, an image built here is
//! loaded, runs, and prints; on Docker a push to the local registry yields the registry's digest.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, LogsOptions, PushImageOptions, RemoveImageOptions,
    TagImageOptions, WaitContainerOptions,
};
use futures_util::TryStreamExt;
use test_support::{busybox_image_archive, ContainerEngine, EngineKind};

async fn load_run_and_read_output(kind: EngineKind) -> anyhow::Result<()> {
    let engine = ContainerEngine::start(kind)?;
    let docker = engine.client()?;
    let archive = busybox_image_archive("localhost/fixture/busybox:test", &["sh"], &[])?;

    docker
        .import_image(
            ImportImageOptions::default(),
            bollard::body_full(archive.bytes.clone().into()),
            None,
        )
        .try_collect::<Vec<_>>()
        .await?;
    let inspected = docker.inspect_image(&archive.tag).await?;
    // Both engines derive the image ID from the config JSON's content: the basis of measurement.
    assert_eq!(inspected.id.as_deref(), Some(archive.image_id.as_str()));

    let greeting = format!("hello from {kind:?}");
    let container = docker
        .create_container(
            None,
            ContainerCreateBody {
                image: Some(archive.tag.clone()),
                cmd: Some(vec!["echo".into(), greeting.clone()]),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    docker.start_container(&container.id, None).await?;
    let exits = docker
        .wait_container(&container.id, None::<WaitContainerOptions>)
        .try_collect::<Vec<_>>()
        .await?;
    assert_eq!(exits.last().map(|exit| exit.status_code), Some(0));

    let output = docker
        .logs(
            &container.id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .try_collect::<Vec<_>>()
        .await?;
    let text: String = output.iter().map(ToString::to_string).collect();
    assert_eq!(text.trim(), greeting, "engine log:\n{}", engine.log_tail());
    Ok(())
}

#[tokio::test]
async fn docker_engine_loads_runs_and_logs() -> anyhow::Result<()> {
    load_run_and_read_output(EngineKind::Docker).await
}

#[tokio::test]
async fn podman_engine_loads_runs_and_logs() -> anyhow::Result<()> {
    load_run_and_read_output(EngineKind::Podman).await
}

/// A push to the fixture registry and a pull back by digest give real `RepoDigests` equal to the
/// registry's manifest digest.
async fn push_and_pull_by_digest(kind: EngineKind) -> anyhow::Result<()> {
    let engine = ContainerEngine::start(kind)?;
    let docker = engine.client()?;
    let archive = busybox_image_archive("localhost/fixture/pushme:v1", &["sh"], &[])?;
    docker
        .import_image(
            ImportImageOptions::default(),
            bollard::body_full(archive.bytes.clone().into()),
            None,
        )
        .try_collect::<Vec<_>>()
        .await?;
    let repository = format!("{}/fixture/pushme", engine.registry().host());
    docker
        .tag_image(
            &archive.tag,
            Some(TagImageOptions {
                repo: Some(repository.clone()),
                tag: Some("v1".into()),
            }),
        )
        .await?;
    docker
        .push_image(
            &repository,
            Some(PushImageOptions {
                tag: Some("v1".into()),
                ..Default::default()
            }),
            None,
        )
        .try_collect::<Vec<_>>()
        .await?;
    let digest = engine.registry().manifest_digest("fixture/pushme", "v1")?;
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    for name in [format!("{repository}:v1"), archive.tag.clone()] {
        docker
            .remove_image(&name, Some(RemoveImageOptions::default()), None)
            .await?;
    }
    let by_digest = format!("{repository}@{digest}");
    docker
        .create_image(
            Some(CreateImageOptions {
                from_image: Some(by_digest.clone()),
                ..Default::default()
            }),
            None,
            None,
        )
        .try_collect::<Vec<_>>()
        .await?;
    let pulled = docker.inspect_image(&by_digest).await?;
    assert!(
        pulled.repo_digests.unwrap_or_default().contains(&by_digest),
        "pulled image does not carry {by_digest}"
    );
    Ok(())
}

#[tokio::test]
async fn docker_registry_push_pull_gives_registry_digest() -> anyhow::Result<()> {
    push_and_pull_by_digest(EngineKind::Docker).await
}

#[tokio::test]
async fn podman_registry_push_pull_gives_registry_digest() -> anyhow::Result<()> {
    push_and_pull_by_digest(EngineKind::Podman).await
}

/// A network made on the private dockerd lives in the host's namespace as a bridge: it must be
/// gone once the fixture is dropped, or a machine's test runs exhaust the address pools.
#[tokio::test]
async fn docker_networks_do_not_outlive_the_engine() -> anyhow::Result<()> {
    let engine = ContainerEngine::start(EngineKind::Docker)?;
    let docker = engine.client()?;
    let created = docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: "fixture-net".into(),
            ..Default::default()
        })
        .await?;
    let bridge = format!("br-{}", &created.id[..12]);
    let subnet = docker
        .inspect_network(
            "fixture-net",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await?
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().next())
        .and_then(|config| config.subnet)
        .unwrap_or_default();
    assert!(subnet.starts_with("10."), "private pool not used: {subnet}");
    assert!(std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists());
    drop(engine);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "{bridge} left behind"
    );
    Ok(())
}

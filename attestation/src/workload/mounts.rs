//! Host paths a compose file mounts into containers. Files inside the workload folder are
//! measured by content (`folder.rs`); a bind mount of a path outside it (`/etc:/x`,
//! `/var/run/docker.sock:...`, `../x`, `~/x`), a named volume whose `driver_opts.device` is a host
//! path, and a top-level `configs`/`secrets` entry whose `file:` lies outside bring in content
//! nobody measured. Each such host path becomes a `host-mount` event naming it, so a golden value
//! must accept it explicitly. Named volumes and tmpfs are state, not inputs, and stay unmeasured.

use super::compose::{field, Compose, ComposeError};
use std::collections::{BTreeMap, BTreeSet};
use yaml_rust2::Yaml;

/// Largest number of distinct host paths one workload may mount.
pub const MAX_HOST_MOUNTS: usize = 64;
/// Longest host path or container path accepted.
pub const MAX_MOUNT_PATH: usize = 1024;
/// Largest payload (the list of uses) of one host-mount event, as the log allows.
pub const MAX_MOUNT_PAYLOAD: usize = super::log::MAX_PAYLOAD_LEN;
/// The variable through which the agent hands its local API socket directory to compose; the
/// only interpolation accepted in a mount source, since the agent itself sets it.
pub const AGENT_SOCKET_VARIABLE: &str = "CVM_AGENT_SOCKET_DIR";

/// A host path outside the workload folder that the workload mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// The host path, normalized (`/etc`, `../x`, `~/x`, an NFS `device` as written), or the
    /// agent socket variable exactly as written.
    pub source: String,
    /// Who mounts it where, sorted: `service web: /x (rw)`, `config app`, `secret db`.
    pub uses: Vec<String>,
}

impl HostMount {
    /// The agent's own local API socket directory (`${CVM_AGENT_SOCKET_DIR...}`).
    pub fn is_agent_socket(&self) -> bool {
        self.source
            .starts_with(&format!("${{{AGENT_SOCKET_VARIABLE}"))
    }

    /// The event payload: the uses, one per line.
    pub fn payload(&self) -> String {
        self.uses.join("\n")
    }
}

/// Where a mount's source lies.
enum Source {
    /// Inside the workload folder: measured file by file.
    Inside,
    /// Outside it: a host path, normalized.
    Host(String),
}

/// One entry of a service's `volumes:`.
struct Mount {
    kind: MountKind,
    target: String,
    read_only: bool,
}

enum MountKind {
    Bind(String),
    Volume(Option<String>),
    Tmpfs,
}

impl Compose {
    /// Every host path outside the workload folder that this compose file mounts, sorted by path.
    pub fn host_mounts(&self) -> Result<Vec<HostMount>, ComposeError> {
        let document = self.document();
        let services = document["services"]
            .as_hash()
            .ok_or(ComposeError::NoServices)?;
        let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, body) in services {
            let service = name.as_str().ok_or(ComposeError::NoServices)?;
            service_mounts(service, body, &document["volumes"], &mut found)?;
        }
        for section in ["configs", "secrets"] {
            for (name, definition) in document[section].as_hash().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                let place = || format!("top-level {section}.{name}");
                let Some(file) = definition["file"].as_str() else {
                    continue;
                };
                if let Source::Host(path) =
                    classify_path(file).map_err(|p| mount_err(place(), p))?
                {
                    let kind = section.trim_end_matches('s');
                    found
                        .entry(path)
                        .or_default()
                        .insert(format!("{kind} {name}"));
                }
            }
        }
        if found.len() > MAX_HOST_MOUNTS {
            return Err(mount_err(
                "volumes".into(),
                format!("more than {MAX_HOST_MOUNTS} distinct host paths are mounted"),
            ));
        }
        let mounts: Vec<HostMount> = found
            .into_iter()
            .map(|(source, uses)| HostMount {
                source,
                uses: uses.into_iter().collect(),
            })
            .collect();
        if let Some(mount) = mounts
            .iter()
            .find(|m| m.payload().len() > MAX_MOUNT_PAYLOAD)
        {
            return Err(mount_err(
                format!("host path {:?}", mount.source),
                format!("mounted in too many places (over {MAX_MOUNT_PAYLOAD} bytes to list)"),
            ));
        }
        Ok(mounts)
    }
}

fn mount_err(place: String, problem: impl Into<String>) -> ComposeError {
    ComposeError::Mount {
        place,
        problem: problem.into(),
    }
}

/// Adds the host paths one service mounts to `found`.
fn service_mounts(
    service: &str,
    body: &Yaml,
    top_volumes: &Yaml,
    found: &mut BTreeMap<String, BTreeSet<String>>,
) -> Result<(), ComposeError> {
    let entries = match field(body, "volumes") {
        None => return Ok(()),
        Some(Yaml::Array(entries)) => entries,
        Some(_) => {
            return Err(mount_err(
                format!("service {service:?}"),
                "volumes must be a list",
            ))
        }
    };
    for (index, entry) in entries.iter().enumerate() {
        let place = || format!("service {service:?} volume {}", index + 1);
        let mount = parse_mount(entry).map_err(|p| mount_err(place(), p))?;
        let mode = if mount.read_only { "ro" } else { "rw" };
        let (path, via) = match &mount.kind {
            MountKind::Tmpfs | MountKind::Volume(None) => continue,
            MountKind::Bind(source) => {
                match classify_path(source).map_err(|p| mount_err(place(), p))? {
                    Source::Inside => continue,
                    Source::Host(path) => (path, String::new()),
                }
            }
            MountKind::Volume(Some(name)) => {
                match volume_device(top_volumes, name).map_err(|p| mount_err(place(), p))? {
                    Some(device) => (device, format!(" via volume {name}")),
                    None => continue,
                }
            }
        };
        found
            .entry(path)
            .or_default()
            .insert(format!("service {service}: {} ({mode}){via}", mount.target));
    }
    Ok(())
}

/// A `volumes:` entry, short (`SOURCE:TARGET[:MODE]`) or long (`{type, source, target}`).
fn parse_mount(entry: &Yaml) -> Result<Mount, String> {
    let mount = match entry {
        Yaml::String(spec) => parse_short(spec)?,
        Yaml::Hash(_) => parse_long(entry)?,
        _ => return Err("a volume must be a string or a mapping".into()),
    };
    if mount.target.len() > MAX_MOUNT_PATH || mount.target.chars().any(char::is_control) {
        return Err("the container path is too long or holds control characters".into());
    }
    Ok(mount)
}

fn parse_short(spec: &str) -> Result<Mount, String> {
    // `${VAR:-default}` holds a colon of its own: take it whole as the source.
    let mut parts: Vec<&str> = Vec::new();
    let mut rest = spec;
    if spec.starts_with("${") {
        let end = spec
            .find('}')
            .ok_or_else(|| format!("{spec:?}: unclosed ${{"))?;
        parts.push(&spec[..=end]);
        rest = spec[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| format!("{spec:?} is not SOURCE:TARGET[:MODE]"))?;
    }
    parts.extend(rest.split(':'));
    let (source, target, options) = match parts.as_slice() {
        [target] => {
            return Ok(Mount {
                kind: MountKind::Volume(None),
                target: (*target).to_owned(),
                read_only: false,
            })
        }
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => return Err(format!("{spec:?} is not SOURCE:TARGET[:MODE]")),
    };
    if source.is_empty() {
        return Err(format!("{spec:?} has an empty source"));
    }
    // Compose's rule: a source that looks like a path is a bind mount, anything else a volume.
    let kind = if source.starts_with(['.', '/', '~', '$']) {
        MountKind::Bind(source.to_owned())
    } else {
        MountKind::Volume(Some(source.to_owned()))
    };
    Ok(Mount {
        kind,
        target: target.to_owned(),
        read_only: options.split(',').any(|o| o == "ro"),
    })
}

fn parse_long(entry: &Yaml) -> Result<Mount, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match &entry[key] {
            Yaml::BadValue | Yaml::Null => Ok(None),
            Yaml::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("`{key}` must be a string")),
        }
    };
    let target = text("target")?.ok_or("a volume mapping needs `target`")?;
    let source = text("source")?.filter(|s| !s.is_empty());
    let kind = match text("type")?.as_deref() {
        Some("bind") => MountKind::Bind(source.ok_or("a bind mount needs `source`")?),
        Some("volume") => MountKind::Volume(source),
        Some("tmpfs") => MountKind::Tmpfs,
        Some(other) => {
            return Err(format!(
                "volume type {other:?} is not supported (bind, volume or tmpfs)"
            ))
        }
        None => return Err("a volume mapping needs `type`".into()),
    };
    Ok(Mount {
        kind,
        target,
        read_only: entry["read_only"].as_bool().unwrap_or(false),
    })
}

/// The host path behind a named volume (`driver_opts.device`), if it has one.
fn volume_device(top_volumes: &Yaml, name: &str) -> Result<Option<String>, String> {
    let Some(device) = top_volumes[name]["driver_opts"]["device"].as_str() else {
        return Ok(None);
    };
    if device.contains('$') {
        return Err(format!(
            "volume {name}: device {device:?} uses variable interpolation; write it out"
        ));
    }
    match classify_path(device)? {
        Source::Host(path) => Ok(Some(path)),
        // A device is resolved by the engine, never against the workload folder.
        Source::Inside => Ok(Some(device.to_owned())),
    }
}

/// Whether a mount source lies inside the workload folder (after lexical normalization), or which
/// host path it names.
fn classify_path(raw: &str) -> Result<Source, String> {
    if raw.len() > MAX_MOUNT_PATH || raw.contains('\0') || raw.chars().any(char::is_control) {
        return Err("the host path is too long or holds control characters".into());
    }
    if raw.contains('$') {
        return agent_socket(raw).map(Source::Host).ok_or_else(|| {
            format!(
                "host path {raw:?} uses variable interpolation; write it out (only \
                 ${{{AGENT_SOCKET_VARIABLE}}} or ${{{AGENT_SOCKET_VARIABLE}:-/absolute/default}} \
                 is accepted)"
            )
        });
    }
    if raw.starts_with('/') {
        return Ok(Source::Host(normalize(raw, true)));
    }
    if raw.starts_with('~') {
        return Ok(Source::Host(normalize(raw, false)));
    }
    let normalized = normalize(raw, false);
    if normalized == ".." || normalized.starts_with("../") {
        Ok(Source::Host(normalized))
    } else {
        Ok(Source::Inside)
    }
}

/// `${CVM_AGENT_SOCKET_DIR}` or `${CVM_AGENT_SOCKET_DIR:-/absolute/default}`, as written.
fn agent_socket(raw: &str) -> Option<String> {
    let inner = raw
        .strip_prefix("${")?
        .strip_suffix('}')?
        .strip_prefix(AGENT_SOCKET_VARIABLE)?;
    let accepted = inner.is_empty()
        || inner
            .strip_prefix(":-")
            .is_some_and(|default| default.starts_with('/') && !default.contains(['$', '{', '}']));
    accepted.then(|| raw.to_owned())
}

/// Drops empty and `.` parts and resolves `..` lexically; an absolute path never rises above
/// `/`, a relative one keeps its leading `..` parts (it then lies outside the folder).
fn normalize(path: &str, absolute: bool) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." && last != "~" => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(text: &str) -> Result<Vec<HostMount>, ComposeError> {
        Compose::parse(text.as_bytes())?.host_mounts()
    }

    #[test]
    fn host_paths_are_named_and_folder_paths_and_volumes_are_not() {
        let found = mounts(
            r#"
services:
  web:
    image: x
    volumes:
      - ./app.py:/app/app.py:ro
      - ./a/../b:/b
      - data:/data
      - /anonymous
      - /etc//ssl/:/etc/ssl:ro,z
      - /var/run/docker.sock:/var/run/docker.sock
      - ../outside:/o
      - ~/home:/h
      - {type: bind, source: /srv, target: /srv, read_only: true}
      - {type: bind, source: rel, target: /rel}
      - {type: tmpfs, target: /tmp}
      - {type: volume, source: nfs, target: /n}
      - ${CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}:/run/cvm-agent/api:ro
volumes:
  data: {}
  nfs: {driver_opts: {type: nfs, o: "addr=10.0.0.1", device: ":/export"}}
configs:
  inside: {file: ./config/app.conf}
  host: {file: /etc/hosts}
"#,
        )
        .unwrap();
        let sources: Vec<&str> = found.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "${CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}",
                "../outside",
                "/etc/hosts",
                "/etc/ssl",
                "/srv",
                "/var/run/docker.sock",
                ":/export",
                "~/home"
            ]
        );
        assert_eq!(found[3].uses, ["service web: /etc/ssl (ro)"]);
        assert_eq!(found[2].uses, ["config host"]);
        assert_eq!(found[6].uses, ["service web: /n (rw) via volume nfs"]);
        assert!(found[0].is_agent_socket() && !found[1].is_agent_socket());
    }

    #[test]
    fn interpolation_and_unknown_mount_types_are_refused() {
        for (text, needle) in [
            ("services: {a: {image: x, volumes: ['${HOME}:/h']}}", "interpolation"),
            (
                "services: {a: {image: x, volumes: ['${CVM_AGENT_SOCKET_DIR:-$X}:/h']}}",
                "interpolation",
            ),
            ("services: {a: {image: x, volumes: ['a:b:c:d']}}", "SOURCE:TARGET"),
            (
                "services: {a: {image: x, volumes: [{type: image, source: y, target: /y}]}}",
                "not supported",
            ),
            ("services: {a: {image: x, volumes: [{type: bind, target: /y}]}}", "`source`"),
            ("services: {a: {image: x, volumes: /x}}", "must be a list"),
            (
                "services: {a: {image: x, volumes: ['v:/v']}}\nvolumes: {v: {driver_opts: {device: '${D}'}}}",
                "interpolation",
            ),
        ] {
            let err = mounts(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn normalization_never_leaves_the_root_lexically() {
        assert_eq!(normalize("/a/../../etc/./x/", true), "/etc/x");
        assert_eq!(normalize("./a/../../b", false), "../b");
        assert_eq!(normalize("./", false), ".");
        assert_eq!(normalize("~/../x", false), "~/../x");
    }
}

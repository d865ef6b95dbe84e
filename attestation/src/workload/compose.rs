//! Just enough of the Compose file format to know what a workload runs: each service's image and
//! the environment files it reads (host mounts: `mounts.rs`). Features that would pull in unmeasured inputs (`build:`,
//! `include:`, `extends:` from another file) are refused rather than ignored.

use super::paths::{relative_path, PathError};
use std::collections::{BTreeMap, BTreeSet};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

/// Largest compose file accepted.
pub const MAX_COMPOSE_BYTES: usize = 1 << 20;
/// Largest number of YAML nodes after alias expansion (a guard against "billion laughs").
pub const MAX_YAML_NODES: usize = 100_000;
/// Deepest nesting of YAML collections accepted (compose files need about 6).
pub const MAX_YAML_DEPTH: usize = 64;

/// Why a compose file cannot be measured.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("compose file is {0} bytes, more than the limit of {MAX_COMPOSE_BYTES}")]
    TooLarge(usize),
    #[error("compose file is not UTF-8")]
    NotUtf8,
    #[error("compose file is not valid YAML: {0}")]
    Yaml(String),
    #[error("compose file expands to more than {MAX_YAML_NODES} YAML nodes (aliases)")]
    TooManyNodes,
    #[error("compose file nests YAML collections deeper than {MAX_YAML_DEPTH} levels")]
    TooDeep,
    #[error("compose file must hold exactly one YAML document, found {0}")]
    Documents(usize),
    #[error("compose file has no `services` mapping")]
    NoServices,
    #[error("service {service:?}: {problem}")]
    Service { service: String, problem: String },
    #[error("compose file uses `{0}`, which would run unmeasured inputs; inline them instead")]
    Unsupported(&'static str),
    #[error("{place}: {problem}")]
    Mount { place: String, problem: String },
    #[error("service {service:?}: env_file {path:?}: {source}")]
    EnvFilePath {
        service: String,
        path: String,
        source: PathError,
    },
}

/// One service, as far as measurement is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeService {
    pub name: String,
    /// The image reference as written.
    pub image: String,
    /// Environment files, relative to the workload folder, normalized.
    pub env_files: Vec<String>,
}

/// A parsed compose file.
#[derive(Debug, Clone)]
pub struct Compose {
    document: Yaml,
}

impl Compose {
    /// Parses a compose file, bounding its size and its alias expansion.
    pub fn parse(bytes: &[u8]) -> Result<Self, ComposeError> {
        if bytes.len() > MAX_COMPOSE_BYTES {
            return Err(ComposeError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ComposeError::NotUtf8)?;
        // A first pass over the events, iteratively: `Parser::load` and `YamlLoader` recurse once
        // per nesting level (block collections have no depth limit there), so deep nesting must
        // be refused before either sees it, or it overflows the stack.
        let mut counter = NodeCounter::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, mark) = parser
                .next_token()
                .map_err(|e| ComposeError::Yaml(e.to_string()))?;
            let end = event == Event::StreamEnd;
            counter.on_event(event, mark);
            if counter.exceeded {
                return Err(ComposeError::TooManyNodes);
            }
            if counter.open.len() > MAX_YAML_DEPTH {
                return Err(ComposeError::TooDeep);
            }
            if end {
                break;
            }
        }
        let mut documents =
            YamlLoader::load_from_str(text).map_err(|e| ComposeError::Yaml(e.to_string()))?;
        if documents.len() != 1 {
            return Err(ComposeError::Documents(documents.len()));
        }
        let document = documents.remove(0);
        if !document["include"].is_badvalue() {
            return Err(ComposeError::Unsupported("include"));
        }
        Ok(Self { document })
    }

    /// Every service (profiles included: a service that could be started is measured), by name.
    pub fn services(&self) -> Result<Vec<ComposeService>, ComposeError> {
        let services = self.document["services"]
            .as_hash()
            .ok_or(ComposeError::NoServices)?;
        let mut result = Vec::with_capacity(services.len());
        for (name, body) in services {
            let name = name.as_str().ok_or(ComposeError::NoServices)?.to_owned();
            result.push(parse_service(name, body)?);
        }
        result.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(result)
    }

    /// The parsed document, for the other readers of this module.
    pub(crate) fn document(&self) -> &Yaml {
        &self.document
    }

    /// The distinct image references of all services, sorted.
    pub fn images(&self) -> Result<BTreeSet<String>, ComposeError> {
        Ok(self.services()?.into_iter().map(|s| s.image).collect())
    }

    /// The compose file with every service's image replaced by the pinned reference given for it,
    /// so that what the engine runs is exactly what was measured.
    pub fn with_images(&self, pinned: &BTreeMap<String, String>) -> Result<String, ComposeError> {
        let mut document = self.document.clone();
        let Yaml::Hash(root) = &mut document else {
            return Err(ComposeError::NoServices);
        };
        let Some(Yaml::Hash(services)) = root.get_mut(&Yaml::String("services".into())) else {
            return Err(ComposeError::NoServices);
        };
        for (name, body) in services.iter_mut() {
            let service = name.as_str().unwrap_or_default().to_owned();
            let image = parse_service(service.clone(), body)?.image;
            let pin = pinned.get(&image).ok_or_else(|| ComposeError::Service {
                service: service.clone(),
                problem: format!("no pinned reference for image {image:?}"),
            })?;
            let Yaml::Hash(fields) = body else {
                unreachable!("parse_service accepted a non-mapping service")
            };
            fields.insert(Yaml::String("image".into()), Yaml::String(pin.clone()));
        }
        let mut out = String::new();
        yaml_rust2::YamlEmitter::new(&mut out)
            .dump(&document)
            .map_err(|e| ComposeError::Yaml(e.to_string()))?;
        out.push('\n');
        Ok(out)
    }
}

/// Looks a key up in a service mapping, honouring YAML merge keys (`<<: *defaults`).
pub(crate) fn field<'a>(body: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    let direct = &body[key];
    if !direct.is_badvalue() {
        return Some(direct);
    }
    match &body["<<"] {
        merged @ Yaml::Hash(_) => field(merged, key),
        Yaml::Array(list) => list.iter().find_map(|merged| field(merged, key)),
        _ => None,
    }
}

fn parse_service(name: String, body: &Yaml) -> Result<ComposeService, ComposeError> {
    let problem = |problem: &str| ComposeError::Service {
        service: name.clone(),
        problem: problem.to_owned(),
    };
    if body.as_hash().is_none() {
        return Err(problem("is not a mapping"));
    }
    if field(body, "build").is_some() {
        return Err(ComposeError::Unsupported("build"));
    }
    if let Some(extends) = field(body, "extends") {
        if extends.as_str().is_none() && !extends["file"].is_badvalue() {
            return Err(ComposeError::Unsupported("extends.file"));
        }
        return Err(problem("uses `extends`: write the service out in full"));
    }
    let image = field(body, "image")
        .and_then(Yaml::as_str)
        .filter(|image| !image.trim().is_empty())
        .ok_or_else(|| problem("has no `image` (every service must name a prebuilt image)"))?;
    if image.contains('$') {
        return Err(problem("image uses variable interpolation; write it out"));
    }
    let mut env_files = Vec::new();
    let mut push = |path: &str| -> Result<(), ComposeError> {
        let normalized = relative_path(path).map_err(|source| ComposeError::EnvFilePath {
            service: name.clone(),
            path: path.to_owned(),
            source,
        })?;
        env_files.push(normalized);
        Ok(())
    };
    match field(body, "env_file") {
        None => {}
        Some(Yaml::String(path)) => push(path)?,
        Some(Yaml::Array(entries)) => {
            for entry in entries {
                match entry {
                    Yaml::String(path) => push(path)?,
                    Yaml::Hash(_) => push(
                        entry["path"]
                            .as_str()
                            .ok_or_else(|| problem("env_file entry without `path`"))?,
                    )?,
                    _ => return Err(problem("env_file entries must be paths")),
                }
            }
        }
        Some(_) => return Err(problem("env_file must be a path or a list of paths")),
    }
    Ok(ComposeService {
        image: image.to_owned(),
        name,
        env_files,
    })
}

/// Counts YAML nodes as they would be after alias expansion, without building anything.
#[derive(Default)]
struct NodeCounter {
    total: usize,
    exceeded: bool,
    /// Open collections: (anchor id, node count when opened).
    open: Vec<(usize, usize)>,
    anchor_sizes: BTreeMap<usize, usize>,
}

impl NodeCounter {
    fn add(&mut self, nodes: usize) {
        self.total = self.total.saturating_add(nodes);
        if self.total > MAX_YAML_NODES {
            self.exceeded = true;
        }
    }
}

impl MarkedEventReceiver for NodeCounter {
    fn on_event(&mut self, event: Event, _mark: Marker) {
        match event {
            Event::Scalar(_, _, anchor, _) => {
                self.add(1);
                if anchor > 0 {
                    self.anchor_sizes.insert(anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.add(1);
                self.open.push((anchor, self.total));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = self.open.pop() {
                    if anchor > 0 {
                        self.anchor_sizes.insert(anchor, self.total - start + 1);
                    }
                }
            }
            Event::Alias(anchor) => {
                let size = self.anchor_sizes.get(&anchor).copied().unwrap_or(1);
                self.add(size);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_images_and_env_files_through_merge_keys() {
        let compose = Compose::parse(
            br#"
x-defaults: &defaults
  image: docker.io/library/busybox:1.36
  env_file: [common.env, {path: ./more/extra.env, required: false}]
services:
  web:
    <<: *defaults
    ports: ["8080:80"]
  worker:
    image: localhost/worker:2
    env_file: worker.env
    profiles: [batch]
"#,
        )
        .unwrap();
        let services = compose.services().unwrap();
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].name, "web");
        assert_eq!(services[0].image, "docker.io/library/busybox:1.36");
        assert_eq!(services[0].env_files, ["common.env", "more/extra.env"]);
        assert_eq!(services[1].image, "localhost/worker:2");
        assert_eq!(services[1].env_files, ["worker.env"]);
    }

    #[test]
    fn refuses_unmeasurable_features_by_name() {
        for (text, needle) in [
            ("services: {a: {build: .}}", "`build`"),
            ("include: [other.yml]\nservices: {}", "`include`"),
            (
                "services: {a: {image: x, env_file: ../../etc/passwd}}",
                "outside",
            ),
            (
                "services: {a: {image: x, env_file: /etc/passwd}}",
                "absolute",
            ),
            ("services: {a: {ports: [1]}}", "has no `image`"),
            ("services: {a: {image: \"${IMG}\"}}", "interpolation"),
            ("version: '3'", "no `services`"),
        ] {
            let err = Compose::parse(text.as_bytes())
                .and_then(|c| c.services())
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn alias_bombs_are_refused_before_expansion() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = level - 1;
            text.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(matches!(
            Compose::parse(text.as_bytes()),
            Err(ComposeError::TooManyNodes)
        ));
    }

    #[test]
    fn pins_images_in_a_copy() {
        let compose =
            Compose::parse(b"services:\n  web:\n    image: localhost/web:1\n    command: [sh]\n")
                .unwrap();
        let pinned = BTreeMap::from([(
            "localhost/web:1".to_owned(),
            "localhost/web@sha256:00".to_owned(),
        )]);
        let text = compose.with_images(&pinned).unwrap();
        let again = Compose::parse(text.as_bytes()).unwrap();
        assert_eq!(
            again.services().unwrap()[0].image,
            "localhost/web@sha256:00"
        );
        assert!(compose.with_images(&BTreeMap::new()).is_err());
    }
}

#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test in the workspace
# against real components (swtpm, dockerd + registry, podman, QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
# image-builder's tests/debian.rs builds the production image, which carries the release agent.
cargo build --release --locked -p cvm-agent
# dockerd, podman and swtpm fixtures run as root on private sockets; see test-support/.
cargo test --workspace --exclude cvm-compare --locked "$@"
# The differential tests against dcap-qvl and az-snp-vtpm, on their own: in the run above their
# dev-dependencies would change the features every other crate is tested with (compare/Cargo.toml).
cargo test -p cvm-compare --locked "$@"

#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test in the workspace
# against real components (swtpm, dockerd + registry, podman, QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
# dockerd, podman and swtpm fixtures run as root on private sockets; see test-support/.
cargo test --workspace --locked "$@"

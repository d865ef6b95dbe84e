#!/usr/bin/env bash
# Installs the system packages the tests and the local demo need on Debian 12, idempotently:
# nothing is downloaded when everything is already there. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  # TPM: software TPM, tools, and the TSS libraries tss-esapi links against
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config libssl-dev clang
  # Boots: QEMU with OVMF, image tools
  qemu-system-x86 qemu-utils ovmf erofs-utils mtools dosfstools cryptsetup-bin
  busybox-static fdisk cpio
  # Container engines: Debian's Docker Engine with a local registry, Podman with runc
  docker.io docker-registry podman runc containernetworking-plugins docker-compose
  # The demo script talks HTTP with curl
  curl
  # test-support removes the bridges a test dockerd leaves (ip link)
  iproute2
  # Python emulators for the cloud tests live in a venv
  python3-venv
  # image-builder: the `debian` profile's root (Debian 13) is made by mmdebstrap; Secure Boot
  # signing of the UKI (sbsign/sbverify) and test keys (openssl)
  mmdebstrap sbsigntool openssl
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-test-deps: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# QEMU 10.0 from bookworm-backports (docs/image.md): Debian 12's QEMU 7.2 has double-faulted
# booting kernel 6.12 under TCG, and a machine that ships qemu-utils 10.0 would lose qemu-img when
# apt installs 7.2's qemu-system-x86 beside it. The backports suite is added on the mirror apt
# already uses for bookworm.
qemu_major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1; }
if [ "$(qemu_major qemu-system-x86_64)" != 10 ] || [ "$(qemu_major qemu-img)" != 10 ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$mirror" ]; then
      mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [ -n "$mirror" ] || { echo "install-test-deps: no bookworm mirror configured in apt" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" | $SUDO tee /etc/apt/sources.list.d/cvm-bookworm-backports.sources >/dev/null
  fi
  echo "install-test-deps: installing QEMU 10 (qemu-system-x86, qemu-utils) from bookworm-backports"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils
fi

# Cloud emulators for the deploy tests (pinned; reinstalled only when the pins change).
# test-support finds them under these prefixes.
VENV=/opt/cvm-test-venv
PYTHON_PACKAGES=(
  "moto[server]==5.2.5"
  "gcp-storage-emulator==2026.7.19"
  # The reference SEV-SNP launch digest calculator (cvm-cli snp-launch-digest is checked against it)
  "sev-snp-measure==0.0.13"
  # API contract fuzzing of the agent against its openapi.json (cvm-agent/tests/contract.rs)
  "schemathesis==4.32.5"
)
pins="$(printf '%s\n' "${PYTHON_PACKAGES[@]}")"
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]; then
  echo "install-test-deps: installing ${PYTHON_PACKAGES[*]} into $VENV"
  $SUDO python3 -m venv "$VENV"
  $SUDO "$VENV/bin/pip" install -q --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
  printf '%s\n' "$pins" | $SUDO tee "$VENV/.pins" >/dev/null
else
  echo "install-test-deps: emulators in $VENV present"
fi

# Azurite (Azure Storage emulator, npm) for deploy-azure's page-blob upload test.
NPM_PREFIX=/opt/cvm-test-npm
NPM_PACKAGES=(
  "azurite@3.37.0"
)
npm_pins="$(printf '%s\n' "${NPM_PACKAGES[@]}")"
if [ "$(cat "$NPM_PREFIX/.pins" 2>/dev/null)" != "$npm_pins" ]; then
  if ! command -v npm >/dev/null; then
    echo "install-test-deps: installing npm"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm
  fi
  echo "install-test-deps: installing ${NPM_PACKAGES[*]} into $NPM_PREFIX"
  $SUDO mkdir -p "$NPM_PREFIX"
  $SUDO npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}"
  printf '%s\n' "$npm_pins" | $SUDO tee "$NPM_PREFIX/.pins" >/dev/null
else
  echo "install-test-deps: emulators in $NPM_PREFIX present"
fi

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

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-test-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

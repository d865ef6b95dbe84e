#!/usr/bin/env bash
# The README's main command: the whole job on the embedded local default, on this machine.
#   build   the `tiny-agent` image (UKI + dm-verity root with the agent and the example workload),
#           predicting its PCRs offline (out/tiny-agent/measurements.json);
#   golden  the golden values computed offline: predicted PCR 4/9/11/12 + the workload's PCR 23;
#   boot    `cvm-cli deploy-local`: QEMU + OVMF with a new software TPM whose attestation key is
#           recorded before the guest runs; the agent in the guest measures the workload;
#   verify  `cvm-cli verify --host` over a fresh nonce: every check printed, exit 0 only if all pass;
#           then the same VM against golden values of a changed config file must fail.
# Everything it needs is installed by scripts/install-test-deps.sh. Outputs go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo build --locked -p image-builder -p cvm-cli -p cvm-agent
bin=target/debug
name=cvm-run-local
port=${CVM_LOCAL_PORT:-18000}
image=out/tiny-agent/disk.raw
state=$("$bin/cvm-cli" deploy-local --image "$image" --name "$name" --dry-run | sed -n 's/.*state in \(.*\)\/tpm-state/\1/p')
trap '"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true' EXIT

echo "==> build: the tiny-agent image with the example workload"
overlay=out/tiny-agent-overlay
rm -rf "$overlay"
mkdir -p "$overlay/data" "$overlay/usr/lib/x86_64-linux-gnu"
cp -r workload "$overlay/data/workload"
rm -rf "$overlay/data/workload/secrets"   # secrets are provisioned at run time, never built in
./scripts/make-example-image.sh "$overlay/data/workload/hello.tar"
# tpm2-tss loads its device TCTI at run time: the agent's ldd closure does not show it.
cp -L /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 "$overlay/usr/lib/x86_64-linux-gnu/"
"$bin/cvm-image" build --config image-builder/images/tiny-agent.toml --out out/tiny-agent

echo "==> golden: computed offline from the build and the workload folder"
"$bin/cvm-cli" golden --measurements out/tiny-agent/measurements.json \
  --workload "$overlay/data/workload" --cloud qemu --tee none --out out/golden.json

echo "==> boot: deploy-local (QEMU + OVMF + swtpm)"
"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
"$bin/cvm-cli" deploy-local --image "$image" --name "$name" --port "$port"

echo "==> verify: the running VM against the golden values"
"$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden out/golden.json --trusted-ak "$state/ak.pub"

echo "==> verify: a changed config file must fail, and say which file"
changed=$(mktemp -d)
cp -r "$overlay/data/workload/." "$changed/"
echo "changed" > "$changed/config/message.txt"
"$bin/cvm-cli" golden --measurements out/tiny-agent/measurements.json --workload "$changed" \
  --cloud qemu --tee none --out out/golden-changed.json
rm -rf "$changed"
if "$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden out/golden-changed.json \
     --trusted-ak "$state/ak.pub" > out/verify-changed.txt; then
  echo "ERROR: a changed workload verified" >&2
  exit 1
fi
grep -E "FAIL +workload.measurement" out/verify-changed.txt
echo "==> done: built, booted, measured and verified; a changed workload is refused"

#!/usr/bin/env bash
# The README's main command: the whole job on the embedded local default, on this machine.
#   build   the `tiny-agent` image (UKI + dm-verity root with the agent and a seed workload; a
#           data partition for the workload), predicting its PCRs offline
#           (out/tiny-agent/measurements.json);
#   boot    `cvm-cli deploy-local`: QEMU + OVMF with a new software TPM whose attestation key is
#           recorded before the guest runs, and a new API token handed over by fw_cfg; the agent
#           in the guest measures the seed workload (and a salted commitment to the token) into
#           PCR 23;
#   golden  the golden values computed offline: predicted PCR 4/9/11/12 + the workload's PCR 23;
#   verify  `cvm-cli verify --host` over a fresh nonce: every check printed, exit 0 only if all pass;
#   upload  `cvm-cli update-workload`: the example workload (./workload), packed fresh, after
#           verifying the VM; the agent measures it into PCR 23 as a new generation;
#   verify  again against golden values of ./workload; then golden values of a changed config
#           file must fail, naming the file.
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

echo "==> build: the tiny-agent image with a seed workload"
overlay=out/tiny-agent-overlay
seed="$overlay/usr/share/cvm/workload"
rm -rf "$overlay"
mkdir -p "$overlay/usr/share/cvm" "$overlay/usr/lib/x86_64-linux-gnu"
cp -r workload "$seed"
rm -rf "$seed/secrets"   # secrets are provisioned at run time, never built in
./scripts/make-example-image.sh "$seed/hello.tar"
# tpm2-tss loads its device TCTI at run time: the agent's ldd closure does not show it.
cp -L /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 "$overlay/usr/lib/x86_64-linux-gnu/"
"$bin/cvm-image" build --config image-builder/images/tiny-agent.toml --out out/tiny-agent

echo "==> boot: deploy-local (QEMU + OVMF + swtpm)"
"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
"$bin/cvm-cli" deploy-local --image "$image" --name "$name" --port "$port"

# The salt under which the agent commits to the API token in PCR 23 (public, drawn once per boot):
# read from the VM's workload log. A host that lies about it only makes verification fail.
curl -sfk --max-time 30 "https://127.0.0.1:$port/eventlog" -o out/eventlog.json ||
  curl -sf --max-time 30 "http://127.0.0.1:$port/eventlog" -o out/eventlog.json

golden() { # WORKLOAD OUT [more golden flags]: computed offline from the build and the folder
  local folder=$1 out=$2
  shift 2
  "$bin/cvm-cli" golden --measurements out/tiny-agent/measurements.json --workload "$folder" \
    --token-file "$state/api-token" --token-salt out/eventlog.json --cloud qemu --tee none \
    --out "$out" "$@"
}

echo "==> golden + verify: the seed workload, against values computed offline"
golden "$seed" out/golden-seed.json
"$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden out/golden-seed.json --trusted-ak "$state/ak.pub"

echo "==> upload: the example workload (./workload), after verifying the VM"
upload=out/upload-workload
rm -rf "$upload"
cp -r workload "$upload"
cp "$seed/hello.tar" "$upload/"   # measure-only agent: image IDs come from the archives
"$bin/cvm-cli" update-workload --host "127.0.0.1:$port" --token-file "$state/api-token" \
  --workload "$upload" --golden out/golden-seed.json --trusted-ak "$state/ak.pub"

echo "==> golden + verify: the uploaded workload"
golden "$upload" out/golden.json --allow-measurement out/golden-seed.json
"$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden out/golden.json --trusted-ak "$state/ak.pub"

echo "==> verify: a changed config file must fail, and say which file"
changed=$(mktemp -d)
cp -r "$upload/." "$changed/"
echo "changed" > "$changed/config/message.txt"
golden "$changed" out/golden-changed.json --allow-measurement out/golden-seed.json
rm -rf "$changed"
if "$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden out/golden-changed.json \
     --trusted-ak "$state/ak.pub" > out/verify-changed.txt; then
  echo "ERROR: a changed workload verified" >&2
  exit 1
fi
grep -E "FAIL +workload.measurement" out/verify-changed.txt
echo "==> done: built, booted, measured, verified, uploaded and verified again; a changed workload is refused"

#!/usr/bin/env bash
# The README's main command: the whole job on the embedded local default, on this machine.
#   1. build the `tiny` image (UKI + dm-verity root + data partition) and predict its PCRs offline;
#   2. boot it under QEMU + OVMF with a software TPM (swtpm) and check that the PCRs the guest's
#      TPM holds equal the prediction (PCR 4, 9, 11; a mismatch fails);
#   3. measure the example workload with the agent's code into a software TPM, fetch evidence over
#      a fresh nonce through the agent's HTTP API, and verify it with `cvm-cli verify --host`
#      against golden values computed offline (`cvm-cli golden`).
# Everything it needs is installed by scripts/install-test-deps.sh. Outputs go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo build --locked -p image-builder -p cvm-cli -p cvm-agent
bin=target/debug
out=out
mkdir -p "$out"

echo "==> 1. build the tiny image"
"$bin/cvm-image" build --config image-builder/images/tiny.toml --out "$out/tiny"

echo "==> 2. boot it (QEMU + OVMF + swtpm, software emulation) and compare PCRs with the prediction"
"$bin/cvm-image" boot --out "$out/tiny" --serial "$out/tiny/serial.log"

echo "==> 3. measure the example workload into a software TPM and verify it from outside"
work=$(mktemp -d)
cleanup() {
  [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "${swtpm_pid:-}" ] && kill "$swtpm_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp -r workload "$work/workload"
./scripts/make-example-image.sh "$work/workload/hello.tar"
head -c 32 /dev/urandom | od -A n -t x1 | tr -d ' \n' > "$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
swtpm socket --tpm2 --tpmstate dir="$work" --flags not-need-init,startup-clear \
  --server type=tcp,port=$((port + 10)),bindaddr=127.0.0.1 \
  --ctrl type=tcp,port=$((port + 11)),bindaddr=127.0.0.1 &
swtpm_pid=$!
sleep 1
# A software TPM has no TEE to vouch for it: whoever creates it pins its attestation key, derived
# here before the agent ever talks to it.
"$bin/cvm-cli" tpm-ak --tcti "swtpm:host=127.0.0.1,port=$((port + 10))" > "$work/ak.pub"
cat > "$work/agent.toml" <<CONF
workload_dir = "$work/workload"
state_dir = "$work/run"
local_listen = "127.0.0.1:$((port + 1))"
external_listen = "127.0.0.1:$port"
local_socket = "$work/run/api/api.sock"
tcti = "swtpm:host=127.0.0.1,port=$((port + 10))"
api_token_file = "$work/token"
image_measurements = "$out/tiny/measurements.json"
cloud = "qemu"
tee = "none"
measure_only = true
CONF
RUST_LOG=warn "$bin/cvm-agent" --config "$work/agent.toml" &
agent_pid=$!
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
"$bin/cvm-cli" golden --workload "$work/workload" --token-file "$work/token" \
  --cloud qemu --tee none --out "$out/golden.json"
"$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden "$out/golden.json" --trusted-ak "$work/ak.pub"
echo "==> done: the image boots with the predicted PCRs, and the measured workload verifies"

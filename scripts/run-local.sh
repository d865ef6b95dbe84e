#!/usr/bin/env bash
# The README's main command: the whole job on the embedded local default, on this machine.
#   build   the production `debian` image (Debian 13, Podman, docker-compose, the release-built
#           cvm-agent; UKI + dm-verity root; a data partition made on first boot) with the example
#           workload (./workload) as its seed, predicting its PCRs offline
#           (out/debian/measurements.json);
#   boot    `cvm-cli deploy-local --data-unlock pushed`: QEMU + OVMF with a new software TPM
#           whose attestation key is recorded before the guest runs, a new API token handed over
#           by fw_cfg, and the workload's port 8080 forwarded to 127.0.0.1:$CVM_LOCAL_WORKLOAD_PORT
#           (18080); the agent commits to the token in PCR 23 and waits with /data (LUKS2 with
#           integrity) locked;
#   golden  the golden values computed offline: predicted PCR 4/9/11/12 + the workload's PCR 23
#           (with the commitment to a new random data key);
#   unlock  `cvm-cli unlock`: verifies the VM as locked against the golden values, then sends the
#           data key over the TLS key its evidence binds; the agent opens /data (formatting it on
#           this first boot), measures the seed workload on it into PCR 23 and runs it with Podman;
#   verify  `cvm-cli verify --host` over a fresh nonce: every check printed, exit 0 only if all pass;
#   answer  the example workload answers over HTTP with its measured config and what it read from
#           the agent's local API socket;
#   update  `cvm-cli update-workload`: the example with a changed config, after verifying the VM;
#           the agent measures it into PCR 23 as a new generation and runs it; it answers anew;
#   verify  passes against golden values of the update, and fails, naming the changed file,
#           against the seed's.
# Everything it needs is installed by scripts/install-test-deps.sh. Outputs go to out/; the time
# each step took is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
timings=()
step_start=$SECONDS
step() { # NAME: ends the running step (recording its time) and announces the next
  [ -n "${step_name:-}" ] && timings+=("$(printf '%-8s %4d s' "$step_name" $((SECONDS - step_start)))")
  step_name=$1
  step_start=$SECONDS
  [ -n "$1" ] && echo "==> $1: ${2:-}"
  return 0
}

step deps "test dependencies and the build"
./scripts/install-test-deps.sh
cargo build --locked --release -p cvm-agent
cargo build --locked -p image-builder -p cvm-cli
bin=target/debug
name=cvm-run-local
port=${CVM_LOCAL_PORT:-18000}
workload_port=${CVM_LOCAL_WORKLOAD_PORT:-18080}
out=out/debian
image=$out/disk.raw
# A VM or state of an earlier run under this name would make the dry run refuse: gone first.
"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
state=$("$bin/cvm-cli" deploy-local --image "$image" --name "$name" --dry-run 2>&1 | sed -n 's/.*state in \(.*\)\/tpm-state/\1/p')
trap '"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true' EXIT

step image "the production debian image, the example workload as its seed"
overlay=out/debian-overlay
seed="$overlay/usr/share/cvm/workload"
rm -rf "$overlay"
mkdir -p "$overlay/usr/share/cvm"
cp -r workload "$seed"
rm -rf "$seed/secrets" && mkdir "$seed/secrets"  # secrets are provisioned at run time, never built in
./scripts/make-example-image.sh "$seed/hello.tar"
"$bin/cvm-image" build --config image-builder/images/debian.toml --out "$out" --overlay "$overlay" \
  --format raw

step boot "deploy-local (QEMU + OVMF + swtpm), workload port 8080 on 127.0.0.1:$workload_port"
"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
"$bin/cvm-cli" deploy-local --image "$image" --name "$name" --port "$port" --memory-mib 2048 \
  --forward "$workload_port:8080" --data-unlock pushed

# The key of /data, new for this deployment (keep it: /data opens only with it).
(umask 077 && openssl rand 32 > out/data.key)

# The salt under which the agent commits to the API token in PCR 23 (public, drawn once per boot):
# read from the VM's workload log. A host that lies about it only makes verification fail.
curl -sfk --max-time 30 "https://127.0.0.1:$port/eventlog" -o out/eventlog.json

golden() { # WORKLOAD OUT [more golden flags]: computed offline from the build and the folder
  local folder=$1 golden_out=$2
  shift 2
  "$bin/cvm-cli" golden --measurements "$out/measurements.json" --workload "$folder" \
    --token-file "$state/api-token" --token-salt out/eventlog.json --cloud qemu --tee none \
    --data-unlock pushed --data-key-file out/data.key --out "$golden_out" "$@"
}
verify() { # GOLDEN
  "$bin/cvm-cli" verify --host "127.0.0.1:$port" --golden "$1" --trusted-ak "$state/ak.pub"
}
answer() { # EXPECTED: waits until the workload's answer contains EXPECTED, then prints it
  local body="" deadline=$((SECONDS + 300))
  while [ $SECONDS -lt $deadline ]; do
    body=$(curl -sf --max-time 15 "http://127.0.0.1:$workload_port/" || true)
    if [[ $body == *"$1"* ]]; then
      echo "workload answered: $body"
      # It read the agent's local API through the socket mounted into the container.
      if [[ $body != *'"cloud_type":"qemu"'* ]]; then
        echo "ERROR: the answer does not carry the agent's /platform answer" >&2
        return 1
      fi
      return 0
    fi
    sleep 3
  done
  echo "ERROR: no answer containing '$1' from 127.0.0.1:$workload_port within 300 s (last: '$body')" >&2
  tail -n 40 "$state/serial.log" >&2 || true
  return 1
}

step unlock "verify the locked VM, then send its data key"
golden "$seed" out/golden-seed.json
"$bin/cvm-cli" unlock --host "127.0.0.1:$port" --golden out/golden-seed.json \
  --key-file out/data.key --token-file "$state/api-token" --trusted-ak "$state/ak.pub"

step verify "the seed workload on the unlocked /data, against golden values computed offline"
verify out/golden-seed.json

step answer "the example workload over HTTP"
answer "message=$(cat "$seed/config/message.txt")"

step update "the example workload with a changed config, after verifying the VM"
upload=out/upload-workload
rm -rf "$upload"
cp -r "$seed" "$upload"
new_message="updated at $(date -u +%FT%TZ) by run-local"
echo "$new_message" > "$upload/config/message.txt"
"$bin/cvm-cli" update-workload --host "127.0.0.1:$port" --token-file "$state/api-token" \
  --workload "$upload" --golden out/golden-seed.json --trusted-ak "$state/ak.pub"
answer "message=$new_message"

step verify "the update against its golden values; the seed's golden must fail naming the file"
golden "$upload" out/golden.json --allow-measurement out/golden-seed.json
verify out/golden.json
if verify out/golden-seed.json > out/verify-old.txt; then
  echo "ERROR: the old golden values verified the updated workload" >&2
  exit 1
fi
grep -E 'FAIL +workload.measurement.*config/message.txt' out/verify-old.txt
step ""
echo "==> done: built, booted, verified, answered, updated, answered anew and verified again; the old golden values are refused"
printf '    %s\n' "${timings[@]}"
printf '    %-8s %4d s\n' total $((SECONDS - started))

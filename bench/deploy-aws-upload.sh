#!/usr/bin/env bash
# Benchmark: `cvm-cli deploy-aws` uploading a half-empty sparse image into an EBS snapshot on the
# moto emulator (parallel, zero blocks skipped) against the naive upload: every 512 KiB block,
# one PutSnapshotBlock at a time, with boto3 (the reference SDK) on the same emulator.
# Also runs ours with --parallel 1, to separate the two effects.
# Usage: bench/deploy-aws-upload.sh [SIZE_MIB]   (needs scripts/install-test-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
VENV=/opt/cvm-test-venv
cargo build -q -p cvm-cli
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
CLI=$TARGET/debug/cvm-cli
W=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
(cd "$W" && MOTO_RECORDER_FILEPATH="$W/rec" exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$W/moto.log" 2>&1) &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/moto-api/" >/dev/null && break; sleep 0.1; done

# Half-empty: random data in every other MiB, holes in between.
truncate -s "${SIZE_MIB}M" "$W/disk.raw"
for ((i = 0; i < SIZE_MIB; i += 2)); do
  dd if=/dev/urandom of="$W/disk.raw" bs=1M count=1 seek="$i" conv=notrunc status=none
done
# A GPT label: the deploy refuses anything that is not a raw GPT disk.
printf 'label: gpt\n' | sfdisk -q "$W/disk.raw" >/dev/null
cat "$W/disk.raw" >/dev/null

export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-2
ours() { # parallel, name -> upload seconds as reported by the CLI
  "$CLI" deploy-aws --image "$W/disk.raw" --name "bench-$2" --allow-from 198.51.100.0/24 \
    --parallel "$1" --json --wait-seconds 60 \
    | tail -1 | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["deployed"]["upload"]["seconds"])'
}
naive() {
  "$VENV/bin/python" - "$W/disk.raw" <<'PY'
import base64, hashlib, os, sys, time, boto3
path = sys.argv[1]
size = os.path.getsize(path)
block = 512 * 1024
ebs = boto3.client("ebs", region_name="us-east-2")
start = time.monotonic()
snap = ebs.start_snapshot(VolumeSize=(size + (1 << 30) - 1) >> 30)["SnapshotId"]
with open(path, "rb") as f:
    for index in range(size // block):
        data = f.read(block)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockData=data, DataLength=block,
                               Checksum=digest, ChecksumAlgorithm="SHA256")
ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=size // block)
print(time.monotonic() - start)
PY
}
t_naive=$(naive)
t_seq=$(ours 1 seq)
t_par=$(ours 16 par)
awk -v n="$t_naive" -v s="$t_seq" -v p="$t_par" -v mib="$SIZE_MIB" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
  printf "image: %d MiB, half of it zero (holes); emulator: moto on loopback; load: %s\n", mib, load;
  printf "naive boto3, every block, sequential: %7.2f s\n", n;
  printf "cvm-cli, zero blocks skipped, 1 at a time: %7.2f s  (%.2fx)\n", s, n / s;
  printf "cvm-cli, zero blocks skipped, 16 parallel: %7.2f s  (%.2fx)\n", p, n / p }'

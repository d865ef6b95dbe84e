#!/usr/bin/env bash
# Benchmark: `cvm-cli deploy-gcp`'s upload of a half-empty sparse image to gcp-storage-emulator
# (sparse tar | gzip -1 streamed into a resumable upload in 32 MiB chunks: packing and upload overlap) against the naive way: a plain
# `tar -czf` of the whole disk and one single-request media upload (curl) of that tarball.
# The Compute endpoint points at a closed port, so the deploy stops after the upload (and
# deletes the object again): only packing and upload are timed.
# Usage: [DATA=random|build] bench/deploy-gcp.sh [SIZE_MIB]   (needs scripts/install-test-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
VENV=/opt/cvm-test-venv
cargo build -q -p cvm-cli
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
CLI=$TARGET/debug/cvm-cli
W=$(mktemp -d)
HOST=""
for n in $(seq 200 250); do
  if ! (exec 3<>"/dev/tcp/127.0.0.$n/80") 2>/dev/null; then HOST=127.0.0.$n; break; fi
done
[ -n "$HOST" ] || { echo "no free loopback port 80"; exit 1; }
(cd "$W" && exec "$VENV/bin/gcp-storage-emulator" start --host "$HOST" --port 80 --in-memory -q >"$W/gcs.log" 2>&1) &
GCS=$!
trap 'kill $GCS 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf "http://$HOST/storage/v1/b" >/dev/null && break; sleep 0.1; done
curl -sf -X POST -H 'content-type: application/json' -d '{"name":"bench"}' \
  "http://$HOST/storage/v1/b?project=bench" >/dev/null

# Half-empty: data in every other MiB, holes in between. DATA=random (default: incompressible,
# the worst case for gzip) or DATA=build (MiBs of the newest out/*/disk.raw: a real image's mix).
DATA=${DATA:-random}
SRC=/dev/urandom
if [ "$DATA" = build ]; then
  SRC=$(ls -t out/*/disk.raw | head -1)
  SRC_MIB=$(($(stat -c %s "$SRC") >> 20))
fi
mkdir "$W/img"
truncate -s "${SIZE_MIB}M" "$W/img/disk.raw"
for ((i = 0; i < SIZE_MIB; i += 2)); do
  skip=0
  if [ "$DATA" = build ]; then skip=$(((i / 2) % SRC_MIB)); fi
  dd if="$SRC" of="$W/img/disk.raw" bs=1M count=1 skip="$skip" seek="$i" conv=notrunc status=none
done
# A GPT label: the deploy refuses anything that is not a raw GPT disk.
printf 'label: gpt\n' | sfdisk -q "$W/img/disk.raw" >/dev/null
cat "$W/img/disk.raw" >/dev/null

now() { date +%s.%N; }
# Naive: tar + gzip of every byte, then one request with the whole tarball.
t0=$(now)
tar -C "$W/img" -czf "$W/naive.tar.gz" disk.raw
t1=$(now)
curl -sf -X POST -H 'content-type: application/gzip' --data-binary "@$W/naive.tar.gz" \
  "http://$HOST/upload/storage/v1/b/bench/o?uploadType=media&name=naive.tar.gz" >/dev/null
t2=$(now)
naive_bytes=$(stat -c %s "$W/naive.tar.gz")
rm -f "$W/naive.tar.gz"

# Ours: preflight against a Compute stub (it offers the machine type, has no instance or
# firewall of the name), then the upload; the runner's test hook stops the deploy right after
# the upload step (its rollback deletes the object).
cat >"$W/compute.py" <<'PY'
import http.server, sys
class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = "/machineTypes/" in self.path
        body = b'{"name": "c3-standard-4"}' if found else b'{"error": {"message": "not found"}}'
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Stub).serve_forever()
PY
CPORT=$((20000 + RANDOM % 20000))
python3 "$W/compute.py" "$CPORT" &
STUB=$!
trap 'kill $STUB $GCS 2>/dev/null; rm -rf "$W"' EXIT
sleep 0.5
t3=$(now)
STORAGE_EMULATOR_HOST="http://$HOST:80" CVM_GCP_COMPUTE_ENDPOINT="http://127.0.0.1:$CPORT/compute/v1" \
  CVM_CLI_TEST_FAIL_AFTER_STEP=1 \
  "$CLI" deploy-gcp --image "$W/img/disk.raw" --name bench --project-id bench-project \
  --bucket bench --allow-from 198.51.100.0/24 --json >"$W/out" 2>"$W/err" || true
t4=$(now)
grep -q "uploaded" "$W/err" || { cat "$W/err"; exit 1; }
ours_upload=$(sed -n 's/.*uploaded [0-9]* MiB in \([0-9.]*\) s.*/\1/p' "$W/err")
ours_bytes=$(sed -n 's/.*uploaded \([0-9]*\) MiB in .*/\1/p' "$W/err")

awk -v p="$(echo "$t1 - $t0" | bc)" -v u="$(echo "$t2 - $t1" | bc)" -v nb="$naive_bytes" \
    -v total="$(echo "$t4 - $t3" | bc)" -v ou="$ours_upload" -v ob="$ours_bytes" \
    -v mib="$SIZE_MIB" -v data="$DATA" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
  printf "image: %d MiB, half of it holes, data %s; emulator: gcp-storage-emulator; load: %s\n", mib, data, load;
  printf "naive: tar -czf %6.1f s + single-request upload of %d MiB %6.2f s = %6.1f s (%.0f MiB/s of image)\n", p, nb / 1048576, u, p + u, mib / (p + u);
  printf "cvm-cli: sparse tar.gz streamed into a resumable upload of %d MiB (pack + upload %.2f s): %6.1f s (%.0f MiB/s of image, %.2fx)\n", ob, ou, total, mib / total, (p + u) / total;
  printf "single-request upload alone: %.0f MiB/s (the emulator rewrites the whole upload for each resumable chunk: chunks cost more there than on GCS)\n", nb / 1048576 / u }'

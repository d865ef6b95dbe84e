#!/usr/bin/env bash
# Benchmark: boot to workload-answering time of the production `debian` image against the same
# image without dm-verity (`verity = false`, a benchmark/diagnosis switch: same disk layout, the
# initrd mounts the root partition directly), in one run, as a ratio. Goal: <= 1.05x.
#
# Both images are built from image-builder/images/debian.toml with the example workload as their
# seed, as scripts/run-local.sh builds it (out/bench-verity-on, out/bench-verity-off). Then, with
# the variants interleaved (on off on off ...), each run times `cvm-cli deploy-local` from its
# start until the example workload answers GET / on its forwarded port 8080, then stops the VM.
# Per-run times, medians and the ratio of the medians (verity on / off) are printed, with the load
# average before each run: other VMs on the machine make the numbers noisy.
#
# Usage: bench/boot-verity.sh
#   BENCH_RUNS=3            boots per variant
#   BENCH_SKIP_BUILD=1      reuse out/bench-verity-{on,off} from an earlier run
#   BENCH_PORT=18700        host port of the agent; BENCH_WORKLOAD_PORT=18780 of the workload
#   CARGO_CMD="cargo"       e.g. "flock /tmp/cargo.lock cargo" on a shared machine
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-3}
port=${BENCH_PORT:-18700}
workload_port=${BENCH_WORKLOAD_PORT:-18780}
cargo_cmd=${CARGO_CMD:-cargo}
name=bench-verity
bin=target/debug
on=out/bench-verity-on
off=out/bench-verity-off
overlay=out/bench-verity-overlay
# Relative paths in a config are relative to its file: the no-verity config sits next to debian.toml.
off_config=image-builder/images/.bench-verity-off-$$.toml
W=$(mktemp -d)
cleanup() {
  "$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
  rm -rf "$W" "$off_config"
}
trap cleanup EXIT

$cargo_cmd build --locked -q --release -p cvm-agent
$cargo_cmd build --locked -q -p image-builder -p cvm-cli

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  echo "==> building the debian image with and without dm-verity (the example workload as seed)"
  seed="$overlay/usr/share/cvm/workload"
  rm -rf "$overlay"
  mkdir -p "$overlay/usr/share/cvm"
  cp -r workload "$seed"
  rm -rf "$seed/secrets" && mkdir "$seed/secrets" # secrets are provisioned at run time
  ./scripts/make-example-image.sh "$seed/hello.tar" >/dev/null
  { cat image-builder/images/debian.toml; printf '\n# bench/boot-verity.sh: benchmark only\nverity = false\n'; } >"$off_config"
  for variant in on off; do
    config=image-builder/images/debian.toml
    [ $variant = on ] || config=$off_config
    if ! "$bin/cvm-image" build --config "$config" --out "out/bench-verity-$variant" \
      --overlay "$overlay" --format raw >"$W/build-$variant.txt" 2>"$W/build-$variant.err"; then
      echo "ERROR: building the verity-$variant image failed:" >&2
      tail -n 30 "$W/build-$variant.err" >&2
      exit 1
    fi
    grep -E 'Built|root hash|cmdline|WARNING|build time' "$W/build-$variant.txt"
  done
  # The same root in both (an agent rebuilt in between would differ): only the cmdline differs.
  root_hash_of() { awk '/verity root hash/ {print $4}' "$W/build-$1.txt"; }
  [ "$(root_hash_of on)" = "$(root_hash_of off)" ] \
    || { echo "ERROR: the two builds have different roots; rerun" >&2; exit 1; }
fi
# The end of the UKI's .cmdline (the initrd's script also mentions the flag, so look past roothash=).
tail_of_cmdline() { grep -aoE 'roothash=[0-9a-f]{64}( cvm\.verity=off)?' "$1/uki.efi" | sed 's/^roothash=[0-9a-f]* *//'; }
[ "$(tail_of_cmdline "$on")" = "" ] || { echo "ERROR: $on is a no-verity build" >&2; exit 1; }
[ "$(tail_of_cmdline "$off")" = "cvm.verity=off" ] || { echo "ERROR: $off is not a no-verity build" >&2; exit 1; }
# The same partition table but for the IDs derived from the UKI (disk and ESP GUIDs).
layout() { sfdisk --dump "$1" | grep -v -e '^label-id' -e '^device' | sed -e 's/^.* : start=/start=/' -e 's/uuid=[^,]*, *//'; }
cmp -s <(layout "$on/disk.raw") <(layout "$off/disk.raw") \
  || { echo "ERROR: the two disks have different partition tables" >&2; exit 1; }

"$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true  # else the dry run refuses
state=$("$bin/cvm-cli" deploy-local --image "$on/disk.raw" --name "$name" --dry-run 2>&1 | sed -n 's/.*state in \(.*\)\/tpm-state/\1/p')

# Prints the seconds from the start of deploy-local until the workload answers (VARIANT RUN); keeps
# the serial console in out/bench-verity-logs/.
boot_once() {
  local variant=$1 run=$2 disk=out/bench-verity-$1/disk.raw body="" t0 t1 deadline
  "$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
  t0=$(date +%s.%N)
  if ! "$bin/cvm-cli" deploy-local --image "$disk" --name "$name" --port "$port" --memory-mib 2048 \
    --forward "$workload_port:8080" >"$W/deploy.txt" 2>&1; then
    echo "ERROR: deploy-local ($variant) failed:" >&2
    tail -n 30 "$W/deploy.txt" >&2
    return 1
  fi
  deadline=$((SECONDS + 600))
  while [ $SECONDS -lt $deadline ]; do
    body=$(curl -sf --max-time 10 "http://127.0.0.1:$workload_port/" || true)
    [ -z "$body" ] || break
    sleep 0.5
  done
  t1=$(date +%s.%N)
  if [ -z "$body" ]; then
    echo "ERROR: no answer from the workload ($variant) within 600 s after the agent" >&2
    tail -n 30 "$state/serial.log" >&2 || true
    return 1
  fi
  # The variant is what it claims: the initrd warns only without verity.
  local warned=no
  grep -q 'cvm-initrd: WARNING: dm-verity OFF' "$state/serial.log" && warned=yes
  if [ "$variant/$warned" = on/yes ] || [ "$variant/$warned" = off/no ]; then
    echo "ERROR: verity $variant, but the initrd's warning was seen: $warned" >&2
    return 1
  fi
  grep -q "accel tcg" "$W/deploy.txt" && echo tcg >"$W/accel" || echo kvm >"$W/accel"
  cp "$state/serial.log" "out/bench-verity-logs/serial-$run-$variant.log"
  "$bin/cvm-cli" cleanup --local "$name" >/dev/null 2>&1 || true
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }'
}

rm -rf out/bench-verity-logs && mkdir -p out/bench-verity-logs
echo "==> $runs boots per variant, interleaved; $(nproc) cores, $(qemu-system-x86_64 --version | head -n 1)"
for i in $(seq "$runs"); do
  for variant in on off; do
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    t=$(boot_once $variant "$i")
    echo "$t" >>"$W/times-$variant"
    printf 'run %d  verity %-3s  %6.1f s   (load before: %s)\n' "$i" "$variant" "$t" "$load"
  done
done

median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
m_on=$(median "$W/times-on")
m_off=$(median "$W/times-off")
echo "accel: $(cat "$W/accel"), load after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v on="$m_on" -v off="$m_off" 'BEGIN {
  r = on / off
  printf "median boot to workload answer: verity on %.1f s, verity off %.1f s\n", on, off
  printf "ratio (verity on / off): %.3fx, goal <= 1.05x: %s\n", r, (r <= 1.05 ? "met" : "NOT met") }'

#!/usr/bin/env bash
# Benchmark: I/O on /data with and without encryption + integrity, in the same VM run.
#
# Boots the production `debian` image's own kernel, initrd and verity root (from its UKI, with
# its command line) under QEMU, with the agent masked and a guest script run by systemd
# (`systemd.run=`), from a small read-only disk. On the image's data partition the script makes,
# BENCH_ROUNDS times and alternating, each formatted anew:
#   1. plain: ext4 made with cvm-data's options on the raw partition, mounted on /data;
#   2. encrypted: the image's own `cvm-data ephemeral` (LUKS2, aes-xts-plain64 + hmac-sha256
#      integrity, 4 KiB sectors, ext4 inside: the exact production parameters) on /data;
# and on each runs the same I/O on a file in /data: sequential write and read (dd, 1 MiB,
# O_DIRECT), then random 4 KiB writes (then sync) and reads (caches dropped, readahead off) over
# that file, each block once (perl, in the image). Prints MB/s, IOPS, the medians and the
# encrypted / plain ratios.
#
# Usage: bench/data-io.sh            (CVM_DEBIAN_OUT=<build dir>, default out/debian)
#   BENCH_ROUNDS (default 3: plain then encrypted, each formatted anew, medians reported),
#   BENCH_SEQ_MIB (default 256), BENCH_RAND_OPS (default 4000), BENCH_ACCEL (default tcg; kvm
#   where it works), BENCH_CPU (QEMU -cpu; default max under TCG, with AES-NI; host under KVM),
#   BENCH_CPUS (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CVM_DEBIAN_OUT:-out/debian}
SEQ_MIB=${BENCH_SEQ_MIB:-256}
OPS=${BENCH_RAND_OPS:-4000}
ROUNDS=${BENCH_ROUNDS:-3}
ACCEL=${BENCH_ACCEL:-tcg}
CPU=${BENCH_CPU:-max}
[ "$ACCEL" = kvm ] && CPU=${BENCH_CPU:-host}
[ -f "$OUT/uki.efi" ] && [ -f "$OUT/disk.raw" ] || {
  echo "no finished debian build in $OUT: run scripts/run-local.sh, or cvm-image build" \
    "--config image-builder/images/debian.toml --out $OUT" >&2
  exit 1
}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

objcopy -O binary --only-section=.linux "$OUT/uki.efi" "$W/vmlinuz"
objcopy -O binary --only-section=.initrd "$OUT/uki.efi" "$W/initrd"
objcopy -O binary --only-section=.cmdline "$OUT/uki.efi" "$W/cmdline"
cmdline=$(tr -d '\0\n' <"$W/cmdline")

# The guest side, on the second disk (/dev/vdb: the kernel names it at probe, before udev's
# by-id links exist). `sh` reads it from the block device and stops at `exit`, before the padding.
cat >"$W/guest.sh" <<EOF
exec >/dev/console 2>&1
set -eu
SEQ_MIB=$SEQ_MIB
OPS=$OPS
ROUNDS=$ROUNDS
EOF
cat >>"$W/guest.sh" <<'EOF'
say() { echo "cvm-bench: $*"; }
now() { date +%s.%N; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
dev=
for p in /sys/class/block/*; do
  grep -qx PARTNAME=data "$p/uevent" 2>/dev/null && { dev=/dev/${p##*/}; break; }
done
[ -n "$dev" ] || { say "FAIL no data partition"; poweroff -f; }
# Random 4 KiB writes (w) or reads (r) over the file, each block once, in a shuffled order.
RAND='my ($mode, $file, $ops, $seed) = @ARGV; srand($seed);
  open(my $fh, $mode eq "w" ? "+<" : "<", $file) or die "$file: $!";
  my $blocks = (-s $file) / 4096; my @b = (0 .. $blocks - 1);
  for (my $i = $#b; $i > 0; $i--) { my $j = int(rand($i + 1)); @b[$i, $j] = @b[$j, $i]; }
  my $buf = "\xa5" x 4096;
  for my $k (@b[0 .. $ops - 1]) {
    sysseek($fh, $k * 4096, 0) or die "seek: $!";
    if ($mode eq "w") { syswrite($fh, $buf) == 4096 or die "write: $!" }
    else { sysread($fh, my $got, 4096) == 4096 or die "read: $!" }
  }'
# One setup's numbers: seq write/read MB/s, random write/read IOPS.
io() {
  f=/data/bench.bin
  drop; a=$(now)
  dd if=/dev/zero of=$f bs=1M count="$SEQ_MIB" oflag=direct conv=fsync status=none
  b=$(now); drop
  dd if=$f of=/dev/null bs=1M iflag=direct status=none
  c=$(now)
  perl -e "$RAND" w $f "$OPS" 1; sync
  d=$(now)
  for q in /sys/block/*/queue/read_ahead_kb; do echo 0 >"$q"; done
  drop; e=$(now)
  perl -e "$RAND" r $f "$OPS" 2
  g=$(now)
  say "RESULT $1 $(awk -v n="$SEQ_MIB" -v o="$OPS" -v a="$a" -v b="$b" -v c="$c" -v d="$d" \
    -v e="$e" -v g="$g" 'BEGIN { m = n * 1.048576;
      printf "%.1f %.1f %.0f %.0f", m / (b - a), m / (c - b), o / (d - c), o / (g - e) }')"
}
say "data partition $dev, $SEQ_MIB MiB sequential, $OPS random 4 KiB ops, $ROUNDS rounds"
mkdir -p /data /run/cvm-agent/data
# Warm-up: write the whole partition once, so neither setup pays for QEMU allocating the
# snapshot overlay's clusters (the first round measured 2x slower without it).
dd if=/dev/zero of="$dev" bs=1M oflag=direct status=none || true
for round in $(seq "$ROUNDS"); do
  mkfs.ext4 -q -F -L cvm-data -O sparse_super2 \
    -E nodiscard,lazy_itable_init=0,lazy_journal_init=0,num_backup_sb=0 "$dev"
  mount -t ext4 -o nodev,nosuid "$dev" /data
  io plain
  umount /data
  head -c 64 /dev/urandom >/run/cvm-agent/data/key
  /usr/local/sbin/cvm-data ephemeral /run/cvm-agent/data/key >/dev/null
  grep -q '^/dev/mapper/cvm-data /data ' /proc/mounts || { say "FAIL /data is not the LUKS2 volume"; poweroff -f; }
  [ "$round" -gt 1 ] || cryptsetup status cvm-data | sed -n 's/^ *\(type\|cipher\|keysize\|integrity\|integrity keysize\|sector size\): */cvm-bench: luks \1: /p'
  io encrypted
  umount /data
  cryptsetup close cvm-data
done
say DONE
poweroff -f
exit 0
EOF
cp "$W/guest.sh" "$W/guest.img"
truncate -s 64K "$W/guest.img"

cores=$(nproc)
load=$(cut -d' ' -f1 /proc/loadavg)
echo "image: $OUT ($(tr ' ' '\n' <<<"$cmdline" | grep roothash=)), accel $ACCEL, cpu $CPU, load $load"
start=$(date +%s)
timeout 1800 qemu-system-x86_64 -machine q35 -accel "$ACCEL" -cpu "$CPU" \
  -m 2048 -smp "${BENCH_CPUS:-1}" \
  -display none -no-reboot -serial "file:$W/serial.log" -monitor none \
  -kernel "$W/vmlinuz" -initrd "$W/initrd" \
  -append "$cmdline systemd.mask=cvm-agent.service systemd.mask=cvm-provision.service systemd.mask=cvm-report.service systemd.run=\"/bin/sh /dev/vdb\" systemd.run_failure_action=poweroff-force" \
  -drive "file=$OUT/disk.raw,if=none,id=root,format=raw,snapshot=on" \
  -device virtio-blk-pci,drive=root \
  -drive "file=$W/guest.img,if=none,id=bench,format=raw,readonly=on" \
  -device virtio-blk-pci,drive=bench \
  -nic none || true
cp "$W/serial.log" "${BENCH_LOG:-/tmp/data-io.serial.log}"
grep -a 'cvm-bench:' "$W/serial.log" | grep -av RESULT || true
{ grep -a 'cvm-bench: RESULT' "$W/serial.log" || true; } | awk '{ sub(/\r$/, ""); print $3, $4, $5, $6, $7 }' >"$W/results"
[ "$(grep -c ^plain "$W/results")" -eq "$ROUNDS" ] && [ "$(grep -c ^encrypted "$W/results")" -eq "$ROUNDS" ] || {
  echo "the guest did not finish: console in ${BENCH_LOG:-/tmp/data-io.serial.log}" >&2
  exit 1
}
echo "each round (setup, seq write MB/s, seq read MB/s, rand write IOPS, rand read IOPS):"
sed 's/^/  /' "$W/results"
# Medians over the rounds, then encrypted / plain.
awk -v t="$(($(date +%s) - start))" -v cores="$cores" -v rounds="$ROUNDS" '
  { for (i = 2; i <= 5; i++) v[$1, i, ++n[$1, i]] = $i }
  function median(s, i,   k, j, a, tmp) {
    for (k = 1; k <= n[s, i]; k++) a[k] = v[s, i, k];
    for (k = 1; k <= n[s, i]; k++) for (j = k + 1; j <= n[s, i]; j++)
      if (a[j] < a[k]) { tmp = a[k]; a[k] = a[j]; a[j] = tmp }
    return n[s, i] % 2 ? a[(n[s, i] + 1) / 2] : (a[n[s, i] / 2] + a[n[s, i] / 2 + 1]) / 2 }
  END {
    split("seq write (MB/s)|seq read (MB/s)|rand 4K write (IOPS)|rand 4K read (IOPS)", N, "|");
    printf "median of %d rounds     %10s %10s %9s\n", rounds, "plain", "encrypted", "enc/plain";
    for (i = 2; i <= 5; i++) {
      p = median("plain", i); e = median("encrypted", i);
      printf "%-22s %10.1f %10.1f %8.2fx\n", N[i - 1], p, e, e / p }
    printf "VM run: %d s, host cores: %d\n", t, cores }' "$W/results"

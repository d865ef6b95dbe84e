#!/usr/bin/env bash
# Agent soak and load benchmark (not a test), on one swtpm, measure-only, release build. For each
# listener (external over TLS, then local TCP) for D seconds at once:
#   - 64 clients (wrk, keep-alive) ask GET /collaterals/{fresh random nonce} as fast as answered;
#   - 1,000 slow connections are held open (each sends part of a request head, then nothing;
#     reopened as soon as the agent closes it);
#   - workload updates run one after another (POST /update-workload, a different workload each);
# then: p50/p99 of /collaterals, answers by status, socket errors, updates applied, slow
# connections the agent closed, and whether it still answers /health and /collaterals.
#   usage: bench/agent-soak.sh [D]     (default 60 seconds per listener)
# Needs wrk. All load comes from 127.0.0.1, so the per-client evidence rate is raised here (the
# figure is the agent's and TPM's, not the limit's), and max_connections is raised to 2048 so
# 1,000 slow connections and 64 clients fit on one listener (the default cap, 1024, would close
# 40 of them at accept).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
clients=64
slow=1000
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
${CARGO_CMD:-cargo} build --release --locked -p cvm-agent >/dev/null
work=$(mktemp -d)
cleanup() {
  for pid in ${agent:-} ${swtpm:-} ${holder:-} ${updater:-}; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 20000
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
swtpm socket --tpm2 --tpmstate dir="$work" --flags not-need-init,startup-clear \
  --server type=tcp,port=$((port + 10)),bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 11)),bindaddr=127.0.0.1 &
swtpm=$!
for _ in $(seq 100); do ss -ltn | grep -q ":$((port + 10)) " && break; sleep 0.1; done

mkdir -p "$work/workload/config"
cp workload/docker-compose.yml workload/app.env "$work/workload/"
cp workload/config/* "$work/workload/config/"
./scripts/make-example-image.sh "$work/workload/hello.tar" >/dev/null
token=$(openssl rand -hex 24)
printf '%s' "$token" > "$work/token"
cat > "$work/agent.toml" <<CONF
workload_dir = "$work/workload"
state_dir = "$work/run"
local_listen = "127.0.0.1:$((port + 1))"
external_listen = "127.0.0.1:$port"
local_socket = "$work/run/api/api.sock"
tcti = "swtpm:host=127.0.0.1,port=$((port + 10))"
cloud = "qemu"
tee = "none"
measure_only = true
api_token_file = "$work/token"
max_connections = 2048
client_evidence_per_sec = 1000000
client_evidence_burst = 1000000
CONF
RUST_LOG=warn target/release/cvm-agent --config "$work/agent.toml" 2>"$work/agent.log" >/dev/null &
agent=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -skf "https://127.0.0.1:$port/health" >/dev/null || { echo "agent did not start:"; cat "$work/agent.log"; exit 1; }

# wrk: a fresh nonce per request; answers counted by status.
cat > "$work/soak.lua" <<'LUA'
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function request()
  local nonce = {}
  for i = 1, 16 do nonce[i] = string.format("%02x", math.random(0, 255)) end
  return wrk.format("GET", "/collaterals/" .. table.concat(nonce))
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, status .. ":" .. n) end
  table.sort(parts)
  local errors = summary.errors
  io.write(string.format("RESULT p50_ms=%.1f p99_ms=%.1f requests=%d rps=%.1f statuses=%s " ..
    "socket_errors=connect:%d,read:%d,write:%d,timeout:%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.requests / (summary.duration / 1e6), table.concat(parts, ","),
    errors.connect, errors.read, errors.write, errors.timeout))
end
LUA

# Slow connections: hold `slow` open, each with part of a request head (on the TLS listener: the
# header of a TLS record the handshake never completes); reopen what the agent closes, and count
# those closes.
cat > "$work/slow.py" <<'PY'
import asyncio, sys
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
partial = b"\x16\x03\x01\x02\x00" if sys.argv[4] == "tls" else b"GET /health HTTP/1.1\r\nHost: x\r\n"
closed = opened = 0
async def hold(deadline):
    global closed, opened
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened += 1
        writer.write(partial)
        try:
            await asyncio.wait_for(reader.read(), max(deadline - loop.time(), 0.01))
            closed += 1
        except asyncio.TimeoutError:
            pass
        except OSError:
            closed += 1
        writer.close()
async def main():
    deadline = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(*(hold(deadline) for _ in range(count)))
    print(f"SLOW opened={opened} closed_by_agent={closed}")
asyncio.run(main())
PY

# Updates, one after another, each a different workload (a new config file), over TLS.
cat > "$work/update.sh" <<'SH'
#!/usr/bin/env bash
work=$1 port=$2 seconds=$3 token=$(cat "$1/token")
end=$(( $(date +%s) + seconds )) ok=0 failed=0 i=0
while [ "$(date +%s)" -lt "$end" ]; do
  i=$((i + 1))
  echo "soak $i" > "$work/workload/config/soak.txt"
  tar -C "$work/workload" -cf "$work/update.tar" docker-compose.yml app.env config hello.tar
  status=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/x-tar' --data-binary @"$work/update.tar" \
    "https://127.0.0.1:$port/update-workload")
  if [ "$status" = 200 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "update: $status" >&2; fi
done
echo "UPDATES applied=$ok failed=$failed"
SH
chmod +x "$work/update.sh"

run() { # name url listen_port tls|plain
  local name=$1 url=$2 listen=$3 kind=$4
  python3 "$work/slow.py" "$listen" "$slow" "$((duration + 4))" "$kind" > "$work/slow.$name" &
  holder=$!
  sleep 3
  local open
  open=$(ss -tn state established "( sport = :$listen )" | tail -n +2 | wc -l)
  "$work/update.sh" "$work" "$port" "$duration" > "$work/update.$name" 2>>"$work/update.err" &
  updater=$!
  wrk -t2 -c"$clients" -d"${duration}s" --timeout 10s -s "$work/soak.lua" "$url" \
    | grep '^RESULT' > "$work/wrk.$name"
  wait "$updater" "$holder"
  echo "$name listener: $(sed 's/^RESULT //' "$work/wrk.$name")"
  echo "  connections open to it at start (slow ones): $open; $(sed 's/^SLOW //' "$work/slow.$name")"
  echo "  $(sed 's/^UPDATES //;s/^/updates: /' "$work/update.$name")"
}

echo "$clients clients x ${duration}s per listener, $slow slow connections, updates running; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run external "https://127.0.0.1:$port" "$port" tls
run local "http://127.0.0.1:$((port + 1))" "$((port + 1))" plain

# Still answering?
health=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/health")
evidence=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/collaterals/$(openssl rand -hex 16)")
local_evidence=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((port + 1))/collaterals/$(openssl rand -hex 16)")
alive=yes; kill -0 "$agent" 2>/dev/null || alive=no
echo "afterwards: agent alive: $alive; external /health $health, /collaterals $evidence; local /collaterals $local_evidence"
echo "agent warnings/errors logged: $(grep -c . "$work/agent.log" || true) lines ($(grep -c 'audit' "$work/agent.log" || true) audit)"
grep -v audit "$work/agent.log" | cut -c1-220 | sort | uniq -c | sort -rn | head -5 || true

#!/usr/bin/env bash
# Agent benchmark (not a test): on one swtpm,
#   - p50 latency of a bare `tpm2_quote` of PCRs 0-23 (SHA-256) with a persistent ECC AK, as a
#     process per quote (the reference a shell user would run);
#   - p50 latency of GET /collaterals/{nonce} from the agent over TLS (a new connection each, as
#     curl makes it; measure-only, release build), which
#     does the same quote plus a PCR read, the event log and JSON;
#   - requests/s of POST /offchain-verify (2 concurrent clients) on that evidence.
#   usage: bench/agent.sh [N]     (default 200 requests each)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
cargo build --release --locked -p cvm-agent -p cvm-cli >/dev/null
work=$(mktemp -d)
cleanup() { kill "${agent:-}" "${swtpm:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
swtpm socket --tpm2 --tpmstate dir="$work" --flags not-need-init,startup-clear \
  --server type=tcp,port=$((port + 10)),bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 11)),bindaddr=127.0.0.1 &
swtpm=$!
# Ready when it listens (a probe connection would be its one client).
for _ in $(seq 100); do ss -ltn | grep -q ":$((port + 10)) " && break; sleep 0.1; done
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$((port + 10))"

p50() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms_now() { date +%s%N; }

# Reference: tpm2_quote with the same kind of AK (restricted ECC P-256 primary, persistent).
tpm2_createprimary -Q -C e -G ecc256:ecdsa-sha256:null -c "$work/ak.ctx" \
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign'
tpm2_evictcontrol -Q -C o -c "$work/ak.ctx" 0x81010001 >/dev/null
tpm2_flushcontext -t >/dev/null 2>&1 || true
for _ in $(seq "$n"); do
  t0=$(ms_now)
  tpm2_quote -Q -c 0x81010001 -l sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23 \
    -q 00112233445566778899aabbccddeeff -m "$work/q.msg" -s "$work/q.sig" -o "$work/q.pcrs" 2>/dev/null
  echo $(( ($(ms_now) - t0) / 1000 ))
done > "$work/ref.us"
ref=$(p50 < "$work/ref.us")

# The agent on the same TPM.
mkdir -p "$work/workload/config"
cp workload/docker-compose.yml workload/app.env "$work/workload/"
cp workload/config/* "$work/workload/config/"
./scripts/make-example-image.sh "$work/workload/hello.tar" >/dev/null
cat > "$work/agent.toml" <<CONF
workload_dir = "$work/workload"
state_dir = "$work/run"
local_listen = "127.0.0.1:$((port + 1))"
external_listen = "127.0.0.1:$port"
local_socket = "$work/run/api/api.sock"
tcti = "$TPM2TOOLS_TCTI"
cloud = "qemu"
tee = "none"
measure_only = true
CONF
RUST_LOG=error target/release/cvm-agent --config "$work/agent.toml" 2>"$work/agent.log" &
agent=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -skf "https://127.0.0.1:$port/health" >/dev/null || { echo "agent did not start:"; cat "$work/agent.log"; exit 1; }
for i in $(seq "$n"); do
  nonce=$(printf '%032x' "$i")
  curl -sk -o /dev/null -w '%{time_appconnect} %{time_total}\n' "https://127.0.0.1:$port/collaterals/$nonce"
done > "$work/agent.times"
agent_p50=$(awk '{printf "%d\n", $2 * 1000000}' "$work/agent.times" | p50)
handshake_p50=$(awk '{printf "%d\n", $1 * 1000000}' "$work/agent.times" | p50)

# /offchain-verify throughput with one evidence document and a matching golden.
nonce=00112233445566778899aabbccddeeff
curl -skf "https://127.0.0.1:$port/collaterals/$nonce" > "$work/evidence.json"
target/release/cvm-cli golden --workload "$work/workload" --out "$work/golden.json" 2>/dev/null
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
ev = json.load(open(f"{w}/evidence.json"))
body = {"collaterals": ev, "golden_measurement": json.load(open(f"{w}/golden.json")),
        "nonce": "00112233445566778899aabbccddeeff", "trusted_ak": ev["tpm"]["ak_pub"]}
json.dump(body, open(f"{w}/verify.json", "w"))
PY
curl -sf -H 'Content-Type: application/json' --data-binary @"$work/verify.json" \
  "http://127.0.0.1:$((port + 1))/offchain-verify" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["success"], r["error"]'
# Two clients on keep-alive connections, so the figure is the agent's, not process start-up's.
rps=$(python3 - "$work/verify.json" "$((port + 1))" "$n" <<'PY'
import http.client, sys, threading, time
body, port, n = open(sys.argv[1], "rb").read(), int(sys.argv[2]), int(sys.argv[3])
def client(count):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        conn.request("POST", "/offchain-verify", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
t0 = time.time()
threads = [threading.Thread(target=client, args=(n,)) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(f"{2 * n / (time.time() - t0):.0f}")
PY
)
echo "tpm2_quote (process per quote), p50:   ${ref} us"
echo "agent GET /collaterals, p50:          ${agent_p50} us (of which TCP + TLS handshake: ${handshake_p50} us)"
awk -v a="$agent_p50" -v r="$ref" 'BEGIN { printf "ratio agent / tpm2_quote:              %.2f (goal <= 1.2)\n", a / r }'
echo "POST /offchain-verify, 2 clients:     ${rps} requests/s"

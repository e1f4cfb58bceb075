#!/usr/bin/env bash
# CPU cost per request of one server path, measured in ways that stay
# repeatable on a loaded, shared machine (issue 8, "Profiles" in
# docs/benchmarks.md):
#
#   callgrind  the server runs under `valgrind --tool=callgrind`; coap-bench
#              sends N1 then N2 requests (fixed counts, closed loop), the
#              counters are zeroed before and dumped after each run, and
#              instructions/request = (Ir(N2) - Ir(N1)) / (N2 - N1): the
#              marginal cost, without start-up, handshakes or the
#              generator's connection set-up. User-space instructions only
#              (the kernel's share of a syscall is invisible to callgrind).
#   perf       the server runs natively; `perf stat -e raw_syscalls:sys_enter,
#              task-clock,context-switches -p PID` over one run of N2
#              requests gives syscalls, CPU time and context switches per
#              request (CPU time is noisy under load; syscall counts are not).
#
# Usage: benches/profile.sh TARGET [--mode callgrind|perf|both]
#                           [--clients C] [--n1 N] [--n2 N] [--out DIR]
# TARGET: emqx-udp | emqx-dtls | emqx-mqtt | hono-udp | hono-dtls | libcoap-udp |
#         libcoap-dtls | udp-echo
# emqx-mqtt: CON POST ps/bench/{client}?qos=1 through mosquitto at $MQTT_URL
# (default mqtt://127.0.0.1:1883), answered after the PUBACK.
# The binaries come from $CARGO_TARGET_DIR/release (build them with
# CARGO_PROFILE_RELEASE_DEBUG=true for function names and lines).
# hono-udp needs RabbitMQ at $AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
# The top-15 inclusive table is written to DIR/TARGET.top.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TARGET=${1:?usage: benches/profile.sh TARGET [--mode callgrind|perf|both] [--clients C] [--n1 N] [--n2 N] [--out DIR]}
shift
MODE=both
CLIENTS=16
N1=2000
N2=12000
OUT=${TMPDIR:-/tmp}/coap-profile
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --n1) N1=$2; shift ;;
    --n2) N2=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "profile.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
BIN=${BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release"}
BENCH=${BENCH:-"$BIN/coap-bench"}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
MQTT_URL=${MQTT_URL:-mqtt://127.0.0.1:1883}
PAYLOAD=(--payload-size 64)
WORK=$(mktemp -d "$OUT/work.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
log() { printf '=== %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PORT=$(free_port)
PSK="$WORK/psk.txt"
echo "bench:bench-secret" >"$PSK"
ID=(); URI=""; SERVER=(); METHOD=(-m post); TYPE=(--non)
case "$TARGET" in
  emqx-udp)
    SERVER=("$BIN/coap-emqx-gateway" --udp "127.0.0.1:$PORT")
    URI="coap://127.0.0.1:$PORT/ps/bench/topic" ;;
  emqx-mqtt)
    SERVER=("$BIN/coap-emqx-gateway" --udp "127.0.0.1:$PORT" --broker "$MQTT_URL")
    URI="coap://127.0.0.1:$PORT/ps/bench/{client}?qos=1"; TYPE=(--con) ;;
  emqx-dtls)
    DPORT=$(free_port)
    SERVER=("$BIN/coap-emqx-gateway" --udp "127.0.0.1:$PORT" --dtls "127.0.0.1:$DPORT" --psk-file "$PSK")
    URI="coaps://127.0.0.1:$DPORT/ps/bench/topic"; ID=(-u bench -k bench-secret) ;;
  hono-udp|hono-dtls)
    DPORT=$(free_port)
    # One device per simulated client (bench-0, bench-1, …), as in a real
    # deployment: 16 clients sending as one device from 16 addresses would
    # measure the client table moving that device between addresses.
    python3 - "$ROOT/examples/hono-registry.json" "$WORK/registry.json" <<'PY'
import json, sys
registry = json.load(open(sys.argv[1]))
for i in range(256):
    registry["devices"].append({"tenant-id": "DEFAULT_TENANT", "device-id": f"bench-{i}", "enabled": True})
    registry["credentials"].append({"tenant-id": "DEFAULT_TENANT", "device-id": f"bench-{i}", "type": "psk",
                                    "auth-id": f"bench-{i}", "enabled": True,
                                    "secrets": [{"key": "aG9uby1zZWNyZXQ="}]})
json.dump(registry, open(sys.argv[2], "w"))
PY
    "$BENCH" amqp-consume "$AMQP_URL" --exchange hono.telemetry --routing-key DEFAULT_TENANT >"$WORK/consumer.log" 2>&1 &
    PIDS+=($!)
    SERVER=("$BIN/coap-hono-adapter" --registry "$WORK/registry.json" --dtls "127.0.0.1:$DPORT" --insecure-udp "127.0.0.1:$PORT" --amqp "$AMQP_URL")
    URI="coap://127.0.0.1:$PORT/telemetry/DEFAULT_TENANT/bench-{client}"; METHOD=(-m put); TYPE=(--con)
    if [ "$TARGET" = hono-dtls ]; then
      URI="coaps://127.0.0.1:$DPORT/telemetry"; METHOD=(-m post); ID=(-u 'bench-{client}@DEFAULT_TENANT' -k hono-secret)
    fi ;;
  libcoap-udp)
    SERVER=(coap-server-notls -A 127.0.0.1 -p "$PORT")
    URI="coap://127.0.0.1:$PORT/example_data"; METHOD=(-m put) ;;
  libcoap-dtls)
    PORT=$(( $(free_port) & ~1 ))
    SERVER=(coap-server-openssl -A 127.0.0.1 -p "$PORT" -k bench-secret)
    URI="coaps://127.0.0.1:$((PORT + 1))/example_data"; METHOD=(-m put); ID=(-u bench -k bench-secret) ;;
  udp-echo)
    SERVER=("$BENCH" udp-echo --listen "127.0.0.1:$PORT")
    URI="coap://127.0.0.1:$PORT/ps/bench/topic" ;;
  *) echo "profile.sh: unknown target $TARGET" >&2; exit 2 ;;
esac
[ "${CON:-0}" = 1 ] && TYPE=(--con)

wait_ready() {
  local i
  for ((i = 0; i < 300; i++)); do
    if "$BENCH" request "${URI//\{client\}/0}" --timeout 1s "${METHOD[@]}" -e x "${ID[@]//\{client\}/0}" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "profile.sh: $TARGET does not answer at $URI" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

load() { # N → prints ok count
  "$BENCH" load "$URI" "${METHOD[@]}" "${TYPE[@]}" "${PAYLOAD[@]}" "${ID[@]}" -c "$CLIENTS" -n "$1" \
    --ack-timeout 10s --handshake-timeout 60s --json -q >"$WORK/load.$1.json" 2>"$WORK/load.$1.err" || true
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("responses", "?"))' "$WORK/load.$1.json" 2>/dev/null || echo "?"
}

if [ "$MODE" = callgrind ] || [ "$MODE" = both ]; then
  log "$TARGET under callgrind (c=$CLIENTS, N1=$N1, N2=$N2)"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" --collect-atstart=yes \
    "${SERVER[@]}" >"$WORK/server.log" 2>&1 &
  VG=$!
  PIDS+=($VG)
  wait_ready
  load 500 >/dev/null # warm-up: caches, maps, sessions of the first clients
  callgrind_control -z "$VG" >/dev/null
  ok1=$(load "$N1")
  callgrind_control -d "n1" "$VG" >/dev/null
  ok2=$(load "$N2")
  callgrind_control -d "n2" "$VG" >/dev/null
  sleep 1
  d1=$(ls -t "$WORK"/cg.out.* | sed -n 2p)
  d2=$(ls -t "$WORK"/cg.out.* | sed -n 1p)
  ir() { grep -m1 '^summary:\|^totals:' "$1" | awk '{print $2}'; }
  i1=$(ir "$d1"); i2=$(ir "$d2")
  python3 - "$TARGET" "$CLIENTS" "$N1" "$ok1" "$i1" "$N2" "$ok2" "$i2" <<'EOF' | tee "$OUT/$TARGET.callgrind.txt"
import sys
t, c, n1, ok1, i1, n2, ok2, i2 = sys.argv[1:]
n1, n2, i1, i2 = int(n1), int(n2), int(i1), int(i2)
print(f"{t} c={c}: run1 {n1} req ({ok1} ok) {i1/1e6:.1f} M Ir = {i1/n1:,.0f} Ir/req; "
      f"run2 {n2} req ({ok2} ok) {i2/1e6:.1f} M Ir = {i2/n2:,.0f} Ir/req; "
      f"marginal {(i2-i1)/(n2-n1):,.0f} Ir/req")
EOF
  callgrind_annotate --inclusive=yes "$d2" 2>/dev/null | head -60 >"$OUT/$TARGET.top.txt" || true
  cp "$d2" "$OUT/$TARGET.callgrind.out"
  kill "$VG" 2>/dev/null || true
  wait "$VG" 2>/dev/null || true
fi

if [ "$MODE" = perf ] || [ "$MODE" = both ]; then
  log "$TARGET natively under perf stat (c=$CLIENTS, N=$N2)"
  "${SERVER[@]}" >"$WORK/server.log" 2>&1 &
  SP=$!
  PIDS+=($SP)
  wait_ready
  load 2000 >/dev/null
  perf stat -x, -e raw_syscalls:sys_enter,task-clock,context-switches -p "$SP" -o "$WORK/perf.txt" &
  PP=$!
  sleep 0.3
  ok=$(load "$N2")
  kill -INT "$PP"; wait "$PP" 2>/dev/null || true
  python3 - "$TARGET" "$CLIENTS" "$N2" "$ok" "$WORK/perf.txt" <<'EOF' | tee "$OUT/$TARGET.perf.txt"
import sys
t, c, n, ok, path = sys.argv[1:]
n = int(n)
v = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 3 and f[0] and not line.startswith("#"):
        try: v[f[2]] = float(f[0])
        except ValueError: pass
sc = v.get("raw_syscalls:sys_enter", 0); tc = v.get("task-clock", 0); cs = v.get("context-switches", 0)
print(f"{t} c={c}: {n} req ({ok} ok): {sc/n:.2f} syscalls/req, {tc*1000/n:.1f} CPU µs/req (task-clock), {cs/n:.2f} ctx switches/req")
EOF
fi

#!/usr/bin/env bash
# Side-by-side comparison run (issue 8): the same `coap-bench` load, on one
# machine, in one run, against
#   (a) coap-bench udp-echo                      — the kernel ceiling
#   (b) libcoap coap-server-notls / -openssl      — the C reference (UDP, DTLS)
#   (c) coap-emqx-gateway, embedded broker         — UDP and DTLS-PSK
#   (d) coap-emqx-gateway over mosquitto (QoS 0/1) — beside coap-bench mqtt-publish
#   (e) coap-hono-adapter over RabbitMQ (NON/CON)  — beside coap-bench amqp-publish
# plus memory per idle observer / connection-mode session / DTLS session.
# It regenerates the section between the markers in docs/benchmarks.md and
# the SVG plots in docs/img/ (benches/compare_report.py renders them).
#
# Usage: benches/compare.sh [--quick] [--duration SECS] [--warmup SECS]
#                           [--clients "1 4 16 64"] [--observers N]
#                           [--dtls-sessions N] [--conn-sessions N]
#                           [--no-build] [--out FILE] [--keep]
#   --quick   ~2 s per point, smaller memory runs (20k observers, 2k sessions)
#   --keep    keep the work directory (logs, raw JSON) and print its path
#
# Figures are ratios measured side by side; nothing here fails because the
# machine was slow — only when a component cannot start. Nothing is pinned.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ORIG_ARGS="$*"

DURATION=5
WARMUP=1
CLIENTS="1 4 16 64"
FIXED_CLIENTS=16
OBSERVERS=100000
DTLS_SESSIONS=10000
CONN_SESSIONS=5000
BUILD=1
KEEP=0
QUICK=0
OUT="$ROOT/docs/benchmarks.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=2; WARMUP=0.5; OBSERVERS=20000; DTLS_SESSIONS=2000; CONN_SESSIONS=1000; ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --observers) OBSERVERS=$2; shift ;;
    --dtls-sessions) DTLS_SESSIONS=$2; shift ;;
    --conn-sessions) CONN_SESSIONS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '=== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ prerequisites
need=()
for p in libcoap3-bin mosquitto rabbitmq-server python3; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ $BUILD = 1 ]; then
  log "cargo build --release (coap-bench, coap-emqx-gateway, coap-hono-adapter)"
  cargo build --release -q -p coap-bench -p coap-emqx-gateway -p coap-hono-adapter
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BENCH="$BIN/coap-bench"
EMQX="$BIN/coap-emqx-gateway"
HONO="$BIN/coap-hono-adapter"
for b in "$BENCH" "$EMQX" "$HONO"; do [ -x "$b" ] || die "$b is missing (run without --no-build)"; done

# Every DTLS client of coap-bench has its own socket.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# ------------------------------------------------------------- bookkeeping
WORK=$(mktemp -d /tmp/coap-compare.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
PIDS=()
RABBIT_NODE=""
cleanup() {
  set +e
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ -n "$RABBIT_NODE" ]; then
    (cd "$WORK" && rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1)
  fi
  if [ $KEEP = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { # a free UDP+TCP port; with an argument, P and P+1 both free
  python3 - "${1:-}" <<'EOF'
import socket, sys
pair = sys.argv[1] == "pair"
for _ in range(200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    try:
        t = socket.socket(); t.bind(("127.0.0.1", p)); t.close()
        if pair:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", p + 1)); u.close()
    except OSError:
        s.close(); continue
    s.close(); print(p); break
EOF
}
wait_tcp() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.5)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
wait_coap() { # uri seconds [request args…]: until the server answers anything
  local uri=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$BENCH" request "$uri" --timeout 300ms "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}
wait_line() { # file pattern seconds pid: until the pattern shows up in file
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
cpu_ticks() { # utime+stime of a pid (0 when gone)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }

# started NAME PID: remember a process we started (stopped by the trap).
started() { PIDS+=("$2"); echo "$2" >"$WORK/$1.pid"; }
stop() { # pid: stop one process we started
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# gateway_addr LOGFILE WHAT: the address a gateway logged for WHAT (udp/dtls)
gateway_addr() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -o "what=$2 addr=[0-9.]*:[0-9]*" | head -1 | sed 's/.*addr=//'
}
start_gateway() { # NAME WHAT-TO-WAIT-FOR args… ; sets GW_PID
  local name=$1 what=$2 i
  shift 2
  "$@" >"$WORK/$name.log" 2>&1 &
  GW_PID=$!
  started "$name" "$GW_PID"
  for ((i = 0; i < 100; i++)); do
    [ -n "$(gateway_addr "$WORK/$name.log" "$what")" ] && return 0
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2
  die "$name did not start"
}

# measure ROW GROUP SERVER_PID BROKER_PID -- coap-bench args…
# Runs one load in the background, samples CPU of the server (or, with
# SERVER_PID "self", of the load process itself), the broker and the load
# generator over the measured window, and appends one JSON line to RESULTS.
measure() {
  local row=$1 group=$2 server=$3 broker=$4
  shift 5
  local out="$WORK/run.json" err="$WORK/run.err"
  log "$row"
  "$BENCH" "$@" --json -q >"$out" 2>"$err" &
  local lp=$!
  [ "$server" = self ] && server=$lp
  # The CPU window: from just after the warm-up to just before the end
  # (the load process must still be alive for its own figure).
  sleep "$CPU_LEAD"
  local t0 s0 b0 l0 t1 s1 b1 l1 rss=0
  t0=$(now); s0=$(cpu_ticks "$server"); l0=$(cpu_ticks "$lp"); b0=0
  [ "$broker" != - ] && b0=$(cpu_ticks "$broker")
  sleep "$CPU_WINDOW"
  t1=$(now); s1=$(cpu_ticks "$server"); l1=$(cpu_ticks "$lp"); b1=0
  [ "$broker" != - ] && b1=$(cpu_ticks "$broker")
  rss=$(rss_kib "$server")
  local rc=0
  wait "$lp" || rc=$?
  python3 - "$row" "$group" "$out" "$err" "$rc" "$t0" "$t1" "$s0" "$s1" "$b0" "$b1" "$l0" "$l1" "$rss" "$CLK_TCK" "$broker" "$*" >>"$RESULTS" <<'EOF'
import json, sys
(row, group, out, err, rc, t0, t1, s0, s1, b0, b1, l0, l1, rss, tck, broker, cmd) = sys.argv[1:]
wall = max(float(t1) - float(t0), 1e-9); tck = float(tck)
try:
    summary = json.load(open(out))
except Exception:
    summary = None
line = {"row": row, "group": group, "rc": int(rc), "summary": summary,
        "cpu": (float(s1) - float(s0)) / tck / wall,
        "bench_cpu": (float(l1) - float(l0)) / tck / wall,
        "broker_cpu": None if broker == "-" else (float(b1) - float(b0)) / tck / wall,
        "rss_kib": int(rss or 0), "cmd": "coap-bench " + cmd,
        "stderr": open(err).read()[-2000:]}
print(json.dumps(line))
EOF
  if [ "$rc" != 0 ]; then echo "  (failed: $(tail -2 "$err" | tr '\n' ' '))" >&2; fi
  return 0
}

# record_extra JSON: any other result line (memory, handshakes).
record() { echo "$1" >>"$RESULTS"; }

# memory_run ROW SERVER_PID READY_PATTERN COUNT -- coap-bench args…
# Waits for the load to print READY_PATTERN (sessions/observers set up),
# lets the server settle, samples its RSS, and records the difference to
# the RSS before the run divided by COUNT. The pattern line's "in N ms"
# gives the set-up rate.
memory_run() {
  local row=$1 server=$2 pattern=$3 count=$4
  shift 5
  local err="$WORK/mem.err" out="$WORK/mem.json"
  log "$row"
  sleep 1
  local before after
  before=$(rss_kib "$server")
  "$BENCH" "$@" --json -q >"$out" 2>"$err" &
  local lp=$!
  local ok=1
  wait_line "$err" "$pattern" 300 "$lp" || ok=0
  sleep 2
  after=$(rss_kib "$server")
  local rc=0
  wait "$lp" || rc=$?
  python3 - "$row" "$before" "$after" "$count" "$ok" "$rc" "$err" "$pattern" "$*" >>"$RESULTS" <<'EOF'
import json, re, sys
row, before, after, count, ok, rc, err, pattern, cmd = sys.argv[1:]
text = open(err).read()
m = re.search(r"coap-bench: (\d+) [^\n]*?(\d+) failed, in (\d+) ms|coap-bench: (\d+) [^\n]* in (\d+) ms", text)
done = ms = None
if m:
    if m.group(1):
        done, ms = int(m.group(1)), int(m.group(3))
    else:
        done, ms = int(m.group(4)), int(m.group(5))
n = done if done else int(count)
print(json.dumps({"row": row, "group": "memory", "ok": ok == "1", "rc": int(rc),
    "rss_before_kib": int(before or 0), "rss_after_kib": int(after or 0), "requested": int(count),
    "established": done, "setup_ms": ms,
    "per_item_bytes": (int(after or 0) - int(before or 0)) * 1024 / max(n, 1),
    "setup_rate": (done / ms * 1000) if done and ms else None,
    "cmd": "coap-bench " + cmd, "stderr": text[-1500:]}))
EOF
  [ "$ok" = 1 ] || echo "  (not ready: $(tail -2 "$err" | tr '\n' ' '))" >&2
  return 0
}

# CPU window of a point: from 0.1 s after the warm-up to ~1 s before the
# load ends (process start-up on a busy machine eats into the margin, and
# the load process must still be alive for its own figure).
CPU_LEAD=$(python3 -c "print($WARMUP + 0.1)")
CPU_WINDOW=$(python3 -c "print(round(max($DURATION * 0.8 - 0.3, 0.3), 2))")
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

PAYLOAD=(--payload-size 64)
LOAD_TIMES=(--duration "${DURATION}s" --warmup "${WARMUP}s")

# ------------------------------------------------------------------ brokers
log "starting private mosquitto"
MQTT_PORT=$(free_port)
mkdir -p "$WORK/mosquitto"
cat >"$WORK/mosquitto/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
log_dest file $WORK/mosquitto/mosquitto.log
EOF
chmod -R a+rwX "$WORK/mosquitto"
mosquitto -c "$WORK/mosquitto/mosquitto.conf" &
MOSQ_PID=$!
started mosquitto "$MOSQ_PID"
wait_tcp "$MQTT_PORT" 20 || { cat "$WORK/mosquitto/mosquitto.log" >&2 || true; die "mosquitto did not start"; }
MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"

log "starting private RabbitMQ"
AMQP_PORT=$(free_port)
DIST_PORT=$(free_port)
RABBIT_NODE="coapcompare$AMQP_PORT@localhost"
R="$WORK/rabbitmq"
mkdir -p "$R/mnesia" "$R/log"
: >"$R/plugins"
echo "loopback_users = none" >"$R/rabbitmq.conf"
chown -R rabbitmq:rabbitmq "$R" 2>/dev/null || true
(
  cd "$R"
  RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_NODENAME=$RABBIT_NODE RABBITMQ_DIST_PORT=$DIST_PORT \
    RABBITMQ_MNESIA_BASE=$R/mnesia RABBITMQ_LOG_BASE=$R/log RABBITMQ_PID_FILE=$R/pid \
    RABBITMQ_ENABLED_PLUGINS_FILE=$R/plugins RABBITMQ_FEATURE_FLAGS_FILE=$R/ff \
    RABBITMQ_CONFIG_FILE=$R/rabbitmq rabbitmq-server -detached >/dev/null 2>&1
)
wait_tcp "$AMQP_PORT" 60 || { tail -50 "$R"/log/*.log >&2 || true; die "RabbitMQ did not start"; }
AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
RABBIT_PID=$(cat "$R/pid" 2>/dev/null || echo -)

# ------------------------------------------------------- reference servers
log "starting udp-echo and libcoap"
ECHO_PORT=$(free_port)
"$BENCH" udp-echo --listen "127.0.0.1:$ECHO_PORT" >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
started echo "$ECHO_PID"
LC_PORT=$(free_port)
coap-server-notls -A 127.0.0.1 -p "$LC_PORT" >"$WORK/libcoap-notls.log" 2>&1 &
LC_PID=$!
started libcoap-notls "$LC_PID"
LCS_PORT=$(free_port pair)
LC_KEY=bench-secret
coap-server-openssl -A 127.0.0.1 -p "$LCS_PORT" -k "$LC_KEY" >"$WORK/libcoap-openssl.log" 2>&1 &
LCS_PID=$!
started libcoap-openssl "$LCS_PID"
wait_coap "coap://127.0.0.1:$ECHO_PORT/x" 10 || die "udp-echo did not start"
wait_coap "coap://127.0.0.1:$LC_PORT/time" 10 || die "coap-server-notls did not start"
wait_coap "coaps://127.0.0.1:$((LCS_PORT + 1))/time" 10 -u bench -k "$LC_KEY" || die "coap-server-openssl did not start"

# ------------------------------------------------ EMQX gateway, embedded
PSK_FILE="$WORK/psk.txt"
echo "bench:bench-secret" >"$PSK_FILE"
start_gateway emqx-embedded dtls "$EMQX" --udp 127.0.0.1:0 --dtls 127.0.0.1:0 --psk-file "$PSK_FILE"
EMQX_PID=$GW_PID
EMQX_UDP=$(gateway_addr "$WORK/emqx-embedded.log" udp)
EMQX_DTLS=$(gateway_addr "$WORK/emqx-embedded.log" dtls)
wait_coap "coap://$EMQX_UDP/ps/bench/ready" 10 -m post -e x || die "EMQX gateway does not answer"

ECHO_URI="coap://127.0.0.1:$ECHO_PORT/ps/bench/topic"
LC_URI="coap://127.0.0.1:$LC_PORT/example_data"
LCS_URI="coaps://127.0.0.1:$((LCS_PORT + 1))/example_data"
GW_URI="coap://$EMQX_UDP/ps/bench/topic"
GWS_URI="coaps://$EMQX_DTLS/ps/bench/topic"

# ---------------------------------------- (a)(b)(c) UDP: throughput vs clients
for c in $CLIENTS; do
  measure "udp-echo NON c=$c" udp "$ECHO_PID" - -- load "$ECHO_URI" -m post --non "${PAYLOAD[@]}" -c "$c" "${LOAD_TIMES[@]}"
  measure "coap-server-notls NON c=$c" udp "$LC_PID" - -- load "$LC_URI" -m put --non "${PAYLOAD[@]}" -c "$c" "${LOAD_TIMES[@]}"
  measure "emqx embedded UDP NON c=$c" udp "$EMQX_PID" - -- load "$GW_URI" -m post --non "${PAYLOAD[@]}" -c "$c" "${LOAD_TIMES[@]}"
done
C=$FIXED_CLIENTS
measure "udp-echo CON c=$C" udp-con "$ECHO_PID" - -- load "$ECHO_URI" -m post --con "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
measure "coap-server-notls CON c=$C" udp-con "$LC_PID" - -- load "$LC_URI" -m put --con "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
measure "emqx embedded UDP CON c=$C" udp-con "$EMQX_PID" - -- load "$GW_URI" -m post --con "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"

# p99 at half of the peak (open loop, embedded, UDP NON)
PEAK=$(python3 - "$RESULTS" <<'EOF'
import json, sys
best = 0
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["row"].startswith("emqx embedded UDP NON") and r.get("summary"):
        best = max(best, r["summary"]["throughput_rps"])
print(int(best))
EOF
)
if [ "$PEAK" -gt 0 ]; then
  HALF=$((PEAK / 2))
  measure "emqx embedded UDP NON half-peak rate=$HALF/s c=$C" half-peak "$EMQX_PID" - -- load "$GW_URI" -m post --non "${PAYLOAD[@]}" -c "$C" --rate "$HALF" "${LOAD_TIMES[@]}"
  # The same open-loop rate against the references: how much of the tail
  # is the generator and the machine rather than the server.
  measure "udp-echo NON half-peak rate=$HALF/s c=$C" half-peak "$ECHO_PID" - -- load "$ECHO_URI" -m post --non "${PAYLOAD[@]}" -c "$C" --rate "$HALF" "${LOAD_TIMES[@]}"
  measure "coap-server-notls NON half-peak rate=$HALF/s c=$C" half-peak "$LC_PID" - -- load "$LC_URI" -m put --non "${PAYLOAD[@]}" -c "$C" --rate "$HALF" "${LOAD_TIMES[@]}"
fi

# ------------------------------------------------------------ (b)(c) DTLS
measure "coap-server-openssl DTLS NON c=$C" dtls "$LCS_PID" - -- load "$LCS_URI" -m put --non "${PAYLOAD[@]}" -c "$C" -u bench -k "$LC_KEY" "${LOAD_TIMES[@]}"
measure "emqx embedded DTLS NON c=$C" dtls "$EMQX_PID" - -- load "$GWS_URI" -m post --non "${PAYLOAD[@]}" -c "$C" -u bench -k bench-secret "${LOAD_TIMES[@]}"
measure "coap-server-openssl DTLS CON c=$C" dtls "$LCS_PID" - -- load "$LCS_URI" -m put --con "${PAYLOAD[@]}" -c "$C" -u bench -k "$LC_KEY" "${LOAD_TIMES[@]}"
measure "emqx embedded DTLS CON c=$C" dtls "$EMQX_PID" - -- load "$GWS_URI" -m post --con "${PAYLOAD[@]}" -c "$C" -u bench -k bench-secret "${LOAD_TIMES[@]}"
stop "$EMQX_PID"

# ----------------------------------------------- (d) EMQX gateway over mosquitto
start_gateway emqx-mosquitto udp "$EMQX" --udp 127.0.0.1:0 --broker "$MQTT_URL"
EMQXM_PID=$GW_PID
EMQXM_UDP=$(gateway_addr "$WORK/emqx-mosquitto.log" udp)
wait_coap "coap://$EMQXM_UDP/ps/bench/ready?qos=1" 15 -m post -e x || die "EMQX gateway over mosquitto does not answer"
measure "emqx→mosquitto NON QoS0 c=$C" mqtt "$EMQXM_PID" "$MOSQ_PID" -- load "coap://$EMQXM_UDP/ps/bench/{client}?qos=0" -m post --non "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
measure "emqx→mosquitto CON QoS1 c=$C" mqtt "$EMQXM_PID" "$MOSQ_PID" -- load "coap://$EMQXM_UDP/ps/bench/{client}?qos=1" -m post --con "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
measure "mqtt-publish QoS0 c=$C" mqtt self "$MOSQ_PID" -- mqtt-publish "$MQTT_URL" --topic 'bench/{client}' --qos 0 -c "$C" --payload-size 64 "${LOAD_TIMES[@]}"
measure "mqtt-publish QoS1 c=$C" mqtt self "$MOSQ_PID" -- mqtt-publish "$MQTT_URL" --topic 'bench/{client}' --qos 1 -c "$C" --payload-size 64 "${LOAD_TIMES[@]}"
stop "$EMQXM_PID"

# ------------------------------------------------ (e) Hono adapter over RabbitMQ
# One device per simulated client (bench-0 …, PSK identity bench-N, key
# hono-secret), as in a deployment where every device has its own address:
# with one device behind all 16 client addresses the adapter's client table
# moved that device on every request (and logged it), which measured the
# benchmark, not the adapter (~15k of ~90k instructions per request).
python3 - "$ROOT/examples/hono-registry.json" "$WORK/hono-registry.json" <<'PY'
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
CONSUMER_PID=$!
started consumer "$CONSUMER_PID"
wait_line "$WORK/consumer.log" "amqp-consume ready" 30 "$CONSUMER_PID" || { cat "$WORK/consumer.log" >&2; die "amqp-consume did not start"; }
start_gateway hono dtls "$HONO" --registry "$WORK/hono-registry.json" --dtls 127.0.0.1:0 --insecure-udp 127.0.0.1:0 --amqp "$AMQP_URL"
HONO_PID=$GW_PID
HONO_UDP=$(gateway_addr "$WORK/hono.log" udp)
HONO_DTLS=$(gateway_addr "$WORK/hono.log" dtls)
HONO_URI="coap://$HONO_UDP/telemetry/DEFAULT_TENANT/bench-{client}"
wait_coap "coap://$HONO_UDP/telemetry/DEFAULT_TENANT/bench-0" 20 -m put -e x || die "Hono adapter does not answer"
measure "hono UDP CON telemetry c=$C" amqp "$HONO_PID" "$RABBIT_PID" -- load "$HONO_URI" -m put --con "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
measure "hono DTLS CON telemetry c=$C" amqp "$HONO_PID" "$RABBIT_PID" -- load "coaps://$HONO_DTLS/telemetry" -m post --con "${PAYLOAD[@]}" -c "$C" -u 'bench-{client}@DEFAULT_TENANT' -k hono-secret "${LOAD_TIMES[@]}"
measure "amqp-publish confirms c=$C" amqp self "$RABBIT_PID" -- amqp-publish "$AMQP_URL" --exchange hono.telemetry --routing-key DEFAULT_TENANT -c "$C" --payload-size 64 "${LOAD_TIMES[@]}"
# NON last: NON telemetry is not confirmed, so it outruns the consumer and
# leaves a queue backlog in RabbitMQ that slows the confirms of whatever
# runs next (measured: CON 18k/s before a NON run, 4k/s right after).
sleep 2
measure "hono UDP NON telemetry c=$C" amqp "$HONO_PID" "$RABBIT_PID" -- load "$HONO_URI" -m put --non "${PAYLOAD[@]}" -c "$C" "${LOAD_TIMES[@]}"
stop "$HONO_PID"
stop "$CONSUMER_PID"

# ----------------------------------------------------------------- memory
# Idle connectionless observers: 50 per socket (the endpoint allows 64
# observe relations per peer).
start_gateway emqx-observers udp "$EMQX" --udp 127.0.0.1:0
P=$GW_PID
A=$(gateway_addr "$WORK/emqx-observers.log" udp)
SOCKS=$(((OBSERVERS + 49) / 50))
memory_run "idle observer (EMQX, embedded, UDP)" "$P" "observer(s) registered" "$OBSERVERS" -- \
  load "coap://$A/ps/bench/observed" --observe "$OBSERVERS" --sockets "$SOCKS" --timeout 120s -d 3s
stop "$P"

start_gateway emqx-connections udp "$EMQX" --udp 127.0.0.1:0 --connection-required
P=$GW_PID
A=$(gateway_addr "$WORK/emqx-connections.log" udp)
memory_run "connection-mode session (EMQX, embedded, UDP)" "$P" "client(s) connected" "$CONN_SESSIONS" -- \
  load "coap://$A/ps/bench/c{client}?clientid=c{client}" --connect 'mqtt/connection?clientid=c{client}' \
  -m post --non -e x -c "$CONN_SESSIONS" --rate 50 -d 3s
stop "$P"

start_gateway emqx-dtls-idle dtls "$EMQX" --udp 127.0.0.1:0 --dtls 127.0.0.1:0 --psk-file "$PSK_FILE"
P=$GW_PID
A=$(gateway_addr "$WORK/emqx-dtls-idle.log" dtls)
memory_run "idle DTLS session (EMQX, embedded)" "$P" "DTLS session(s) established" "$DTLS_SESSIONS" -- \
  load "coaps://$A/ps/bench/idle" -m post --non -e x -c "$DTLS_SESSIONS" -u bench -k bench-secret \
  --rate 50 -d 3s --handshake-timeout 60s
stop "$P"

# libcoap for comparison: a fresh coap-server-openssl.
stop "$LCS_PID"
LCS2_PORT=$(free_port pair)
coap-server-openssl -A 127.0.0.1 -p "$LCS2_PORT" -k "$LC_KEY" >"$WORK/libcoap-openssl-2.log" 2>&1 &
P=$!
started libcoap-openssl-2 "$P"
if wait_coap "coaps://127.0.0.1:$((LCS2_PORT + 1))/time" 10 -u bench -k "$LC_KEY"; then
  memory_run "idle DTLS session (coap-server-openssl)" "$P" "DTLS session(s) established" "$DTLS_SESSIONS" -- \
    load "coaps://127.0.0.1:$((LCS2_PORT + 1))/example_data" -m put --non -e x -c "$DTLS_SESSIONS" -u bench -k "$LC_KEY" \
    --rate 50 -d 3s --handshake-timeout 60s
fi
stop "$P"

# ----------------------------------------------------------------- report
log "writing $OUT and docs/img/"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
git diff --quiet HEAD -- crates bins 2>/dev/null || DIRTY=" (with uncommitted changes in crates/ or bins/)"
export COMMIT DIRTY QUICK DURATION WARMUP FD_LIMIT ORIG_ARGS LOAD_START CPU_WINDOW OBSERVERS DTLS_SESSIONS CONN_SESSIONS FIXED_CLIENTS
python3 "$ROOT/benches/compare_report.py" "$RESULTS" "$OUT" "$ROOT/docs/img"
log "done"

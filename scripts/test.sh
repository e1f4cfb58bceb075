#!/usr/bin/env bash
# The one test command (README "Test"; .ci/run calls exactly this).
#
# On a fresh Debian machine it:
#   1. installs what the suite needs (Debian packages, Rust components),
#   2. checks formatting and runs clippy with -D warnings,
#   3. starts a private mosquitto and a private RabbitMQ on loopback, on free
#      ports, under a temporary directory,
#   4. runs the whole workspace test suite against them (MQTT_URL, AMQP_URL),
#   5. stops whatever it started, and only that.
#
# Options:
#   --no-lint     skip fmt/clippy (for quick local loops)
#   --no-brokers  do not start brokers; broker tests then fail loudly
#   --fuzz SECS   afterwards run every cargo-fuzz target for SECS seconds
#                 (fuzz/run-all.sh: installs nightly's cargo-fuzz if missing,
#                 fails on any crash)
#   --ci          what CI runs (.ci/run): everything above plus one minute
#                 per fuzz target (--fuzz 60)
#   -- ARGS       extra arguments passed to `cargo test`
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

lint=1
brokers=1
fuzz_secs=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-lint) lint=0 ;;
    --no-brokers) brokers=0 ;;
    --fuzz) shift; fuzz_secs=${1:?--fuzz needs a number of seconds} ;;
    --ci) fuzz_secs=60 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '\n=== %s\n' "$*"; }

# ---------------------------------------------------------------- 1. install
APT_PACKAGES=(pkg-config libssl-dev libcoap3-bin mosquitto mosquitto-clients rabbitmq-server python3 iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ $lint = 1 ]; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# ------------------------------------------------------------------- 2. lint
if [ $lint = 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

# ---------------------------------------------------------------- 3. brokers
WORK=$(mktemp -d /tmp/coap-gw-test.XXXXXX)
chmod 755 "$WORK"
MOSQ_PID=""
RABBIT_NODE=""
cleanup() {
  set +e
  if [ -n "$MOSQ_PID" ]; then kill "$MOSQ_PID" 2>/dev/null; wait "$MOSQ_PID" 2>/dev/null; fi
  if [ -n "$RABBIT_NODE" ]; then
    (cd "$WORK" && rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1)
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if python3 -c "import socket,sys; socket.create_connection(('$1',$2),0.5)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

if [ $brokers = 1 ]; then
  log "starting private mosquitto"
  MQTT_PORT=$(free_port)
  mkdir -p "$WORK/mosquitto"
  cat >"$WORK/mosquitto/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest file $WORK/mosquitto/mosquitto.log
EOF
  chmod -R a+rwX "$WORK/mosquitto"
  mosquitto -c "$WORK/mosquitto/mosquitto.conf" &
  MOSQ_PID=$!
  wait_port 127.0.0.1 "$MQTT_PORT" 20 || { echo "mosquitto did not start"; cat "$WORK/mosquitto/mosquitto.log" || true; exit 1; }
  export MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
  echo "MQTT_URL=$MQTT_URL"

  log "starting private RabbitMQ"
  AMQP_PORT=$(free_port)
  DIST_PORT=$(free_port)
  RABBIT_NODE="coapgwtest$AMQP_PORT@localhost"
  R="$WORK/rabbitmq"
  mkdir -p "$R/mnesia" "$R/log"
  : >"$R/plugins"
  echo "loopback_users = none" >"$R/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$R" 2>/dev/null || true
  (
    cd "$R"
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_NODENAME=$RABBIT_NODE RABBITMQ_DIST_PORT=$DIST_PORT \
      RABBITMQ_MNESIA_BASE=$R/mnesia RABBITMQ_LOG_BASE=$R/log \
      RABBITMQ_ENABLED_PLUGINS_FILE=$R/plugins RABBITMQ_FEATURE_FLAGS_FILE=$R/ff \
      RABBITMQ_CONFIG_FILE=$R/rabbitmq rabbitmq-server -detached >/dev/null 2>&1
  )
  wait_port 127.0.0.1 "$AMQP_PORT" 60 || { echo "RabbitMQ did not start"; tail -50 "$R"/log/*.log || true; exit 1; }
  export AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
  # Tests that restart a broker need to know how (they use their own instances,
  # but these tell them where the private node lives).
  export RABBITMQ_TEST_NODE="$RABBIT_NODE"
  echo "AMQP_URL=$AMQP_URL"
fi

# ------------------------------------------------------------------ 4. tests
log "cargo test --workspace"
cargo test --workspace "${extra[@]}"

# ------------------------------------------------------------------- 5. fuzz
if [ "$fuzz_secs" -gt 0 ]; then
  log "fuzzing every target for ${fuzz_secs}s"
  bash fuzz/run-all.sh "$fuzz_secs"
fi

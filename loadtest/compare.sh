#!/usr/bin/env bash
# Runs the same ringcast-loadtest scenario against Ringcast and against another Pusher-protocol
# server (Soketi, Sockudo, ...) given by URL, then prints the results side by side.
#
#   loadtest/compare.sh --other-ws-url ws://127.0.0.1:6002 [options] -- SCENARIO [scenario args]
#
# Example (fan-out, 1000 subscribers, 100 events/s, client events on a private channel):
#   loadtest/compare.sh --other-ws-url ws://127.0.0.1:6002 --other-pid 1234 --other-label soketi \
#       -- fanout --subscribers 1000 --rate 100 --duration 10
#
# Options:
#   --other-ws-url URL     the other server's WebSocket base URL (required)
#   --other-api-url URL    its REST base URL (default: derived from the WebSocket URL)
#   --other-app-id ID / --other-key KEY / --other-secret SECRET   its credentials
#                          (default: app-id / app-key / app-secret)
#   --other-pid PID        its process id, for server CPU and memory figures
#   --other-label NAME     column name (default: other)
#   --ringcast-url URL     use an already running Ringcast instead of starting one
#   --ringcast-pid PID     its process id (with --ringcast-url)
#   --ringcast-bin PATH    Ringcast binary to start (default: target/release/ringcast)
#   --config FILE          Ringcast config (default: loadtest/ringcast-bench.toml)
#   --workers N            Ringcast workers (default: the config's / one per core)
#   --loadtest-bin PATH    default: target/release/ringcast-loadtest
#   --out DIR              where the JSON results go (default: a temporary directory)
# Client-event scenarios need client events enabled on the other server's app (and its
# per-connection client-event rate limit raised, or more --publishers).
set -euo pipefail
cd "$(dirname "$0")/.."

OTHER_WS="" OTHER_API="" OTHER_ID="app-id" OTHER_KEY="app-key" OTHER_SECRET="app-secret"
OTHER_PID="" OTHER_LABEL="other" RC_URL="" RC_PID="" RC_BIN="target/release/ringcast"
CONFIG="loadtest/ringcast-bench.toml" WORKERS="" LT_BIN="target/release/ringcast-loadtest" OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --other-ws-url) OTHER_WS="$2"; shift 2 ;;
    --other-api-url) OTHER_API="$2"; shift 2 ;;
    --other-app-id) OTHER_ID="$2"; shift 2 ;;
    --other-key) OTHER_KEY="$2"; shift 2 ;;
    --other-secret) OTHER_SECRET="$2"; shift 2 ;;
    --other-pid) OTHER_PID="$2"; shift 2 ;;
    --other-label) OTHER_LABEL="$2"; shift 2 ;;
    --ringcast-url) RC_URL="$2"; shift 2 ;;
    --ringcast-pid) RC_PID="$2"; shift 2 ;;
    --ringcast-bin) RC_BIN="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --loadtest-bin) LT_BIN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (scenario arguments go after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$OTHER_WS" ]] || { echo "--other-ws-url is required" >&2; exit 2; }
[[ $# -ge 1 ]] || { echo "give the scenario after --, e.g. -- fanout --subscribers 1000" >&2; exit 2; }
SCENARIO="$1"; shift
[[ -x "$LT_BIN" ]] || { echo "$LT_BIN missing: cargo build --release -p ringcast-loadtest" >&2; exit 1; }
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
SWEEP_OUT=()

RC_STARTED_PID=""
cleanup() {
  if [[ -n "$RC_STARTED_PID" ]]; then
    kill "$RC_STARTED_PID" 2>/dev/null || true
    wait "$RC_STARTED_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [[ -z "$RC_URL" ]]; then
  [[ -x "$RC_BIN" ]] || { echo "$RC_BIN missing: cargo build --release --bin ringcast" >&2; exit 1; }
  args=(--listen 127.0.0.1:0)
  [[ -n "$CONFIG" ]] && args+=(--config "$CONFIG")
  [[ -n "$WORKERS" ]] && args+=(--workers "$WORKERS")
  "$RC_BIN" "${args[@]}" >"$OUT/ringcast.out" 2>"$OUT/ringcast.err" &
  RC_STARTED_PID=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$OUT/ringcast.out" 2>/dev/null && break
    sleep 0.1
  done
  addr="$(grep -o '127\.0\.0\.1:[0-9]*' "$OUT/ringcast.out" | head -n1 || true)"
  [[ -n "$addr" ]] || { echo "ringcast did not start:"; cat "$OUT/ringcast.err"; exit 1; }
  RC_URL="ws://$addr"
  RC_PID="$RC_STARTED_PID"
fi

run() { # label ws-url api-url id key secret pid json
  local label="$1" ws="$2" api="$3" id="$4" key="$5" secret="$6" pid="$7" json="$8"
  shift 8
  local a=("$SCENARIO" --label "$label" --ws-url "$ws" --app-id "$id" --key "$key" --secret "$secret" --json "$json")
  [[ -n "$api" ]] && a+=(--api-url "$api")
  [[ -n "$pid" ]] && a+=(--server-pid "$pid")
  [[ "$SCENARIO" == sweep ]] && a+=(--out "$OUT/sweep-$label")
  echo "==> $label: $LT_BIN ${a[*]} $*" >&2
  timeout 3600 "$LT_BIN" "${a[@]}" "$@"
}

run ringcast "$RC_URL" "" app-id app-key app-secret "$RC_PID" "$OUT/ringcast.json" "$@"
run "$OTHER_LABEL" "$OTHER_WS" "$OTHER_API" "$OTHER_ID" "$OTHER_KEY" "$OTHER_SECRET" "$OTHER_PID" "$OUT/other.json" "$@"

echo
echo "== side by side ($SCENARIO $*) =="
"$LT_BIN" report "$OUT/ringcast.json" "$OUT/other.json"
echo "(JSON in $OUT)"

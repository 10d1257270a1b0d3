#!/usr/bin/env bash
# The side-by-side in one command: runs one scenario grid against several Pusher-protocol
# servers, one at a time, on this machine, and writes one report (Markdown table + SVG charts,
# machine, versions and every command) with `ringcast-loadtest compare`.
#
#   loadtest/compare.sh [--servers ringcast,sockudo,soketi] [--grid full|quick] [--out DIR]
#                       [--server-cpus LIST --gen-cpus LIST] [--peers DIR]
#
#   --servers      which servers, in order (default: ringcast,sockudo,soketi)
#   --grid         full: the published grid (needs a quiet machine, ~30 min per server);
#                  quick: tiny loads that check every mode works against every server (~1 min
#                  per server; its figures mean nothing)
#   --out DIR      results (default: loadtest/results/compare-<UTC date>)
#   --server-cpus / --gen-cpus   keep the server (taskset) and the generator (--cpus) on
#                  separate cores, e.g. --server-cpus 0 --gen-cpus 1; the report says how the
#                  machine was shared either way
#   --peers DIR    where the peers are installed (default: /work/peers; see loadtest/peers/README.md)
#   --ringcast-workers N   Ringcast worker threads (default: one per server CPU, else 2)
#   --bin-dir DIR  where ringcast and ringcast-loadtest are (default: target/release; a debug
#                  build is fine for --grid quick)
#
# Servers: Ringcast (target/release/ringcast, loadtest/ringcast-bench.toml), Sockudo
# (DIR/sockudo/bin/sockudo, loadtest/peers/sockudo.json, port 6003) and Soketi (Node 18 from
# DIR/soketi, loadtest/peers/soketi.json, port 6002). Every run is bounded by `timeout`; each
# server is stopped before the next one starts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

SERVERS="ringcast,sockudo,soketi" GRID="full" OUT="" SERVER_CPUS="" GEN_CPUS="" PEERS="/work/peers"
RC_WORKERS="" BIN_DIR="target/release"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --servers) SERVERS="$2"; shift 2 ;;
    --grid) GRID="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
    --gen-cpus) GEN_CPUS="$2"; shift 2 ;;
    --peers) PEERS="$2"; shift 2 ;;
    --ringcast-workers) RC_WORKERS="$2"; shift 2 ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
LT="$(cd "$BIN_DIR" && pwd)/ringcast-loadtest"
RC="$(cd "$BIN_DIR" && pwd)/ringcast"
[[ -x "$LT" && -x "$RC" ]] || { echo "build first: cargo build --release --bin ringcast -p ringcast-loadtest" >&2; exit 1; }
OUT="${OUT:-loadtest/results/compare-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
COMMANDS="$OUT/commands.txt"
: >"$COMMANDS"

case "$GRID" in
  full)
    SWEEP=(--subscribers 10000 --channels 1 --payload 100 --rates 5,10,15,20,30,40,60,80,100 --duration 5 --stop-after 3)
    POINT=(--subscribers 1000 --channels 1 --payload 100 --rate 100 --duration 10)
    CONNECT=(--connections 19000 --concurrency 256 --hold 5)
    REST=(--subscribers 10 --channels 1 --payload 100 --publishers 4 --rest-inflight 64
          --rates 1000,5000,10000,20000,30000,40000,60000,80000,100000 --duration 5 --stop-after 2)
    PRESENCE=(--residents 20 --churners 40 --rate 100 --hold-ms 200 --duration 10)
    ;;
  quick)
    SWEEP=(--subscribers 100 --channels 1 --payload 100 --rates 10,20 --duration 1 --stop-after 2)
    POINT=(--subscribers 100 --channels 2 --payload 100 --rate 50 --duration 2)
    CONNECT=(--connections 300 --concurrency 64 --hold 0.5)
    REST=(--subscribers 10 --channels 1 --payload 100 --publishers 2 --rest-inflight 8
          --rates 100,200 --duration 1 --stop-after 2)
    PRESENCE=(--residents 3 --churners 4 --rate 10 --hold-ms 100 --duration 2)
    ;;
  *) echo "--grid full|quick" >&2; exit 2 ;;
esac
GEN=()
[[ -n "$GEN_CPUS" ]] && GEN=(--cpus "$GEN_CPUS")
PIN=()
[[ -n "$SERVER_CPUS" ]] && PIN=(taskset -c "$SERVER_CPUS")
if [[ -z "$RC_WORKERS" ]]; then
  if [[ -n "$SERVER_CPUS" ]]; then
    RC_WORKERS="$(python3 -c "import sys; s=set()
for p in sys.argv[1].split(','):
    a,_,b=p.partition('-'); s.update(range(int(a), int(b or a)+1))
print(len(s))" "$SERVER_CPUS")"
  else
    RC_WORKERS=2
  fi
fi

SERVER_PID="" ADDR=""
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT

wait_port() { # host:port
  local host="${1%:*}" port="${1##*:}"
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_server() { # name
  local log="$OUT/$1/server.log"
  mkdir -p "$OUT/$1"
  case "$1" in
    ringcast)
      echo "${PIN[*]} $RC --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers $RC_WORKERS" >>"$COMMANDS"
      "${PIN[@]}" "$RC" --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers "$RC_WORKERS" >"$log" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 1 100); do grep -q "listening on" "$log" 2>/dev/null && break; sleep 0.1; done
      ADDR="$(grep -o '127\.0\.0\.1:[0-9]*' "$log" | head -n1 || true)"
      ;;
    sockudo)
      local bin="$PEERS/sockudo/bin/sockudo"
      [[ -x "$bin" ]] || { echo "sockudo missing at $bin (see loadtest/peers/README.md)" >&2; return 1; }
      # Sockudo logs every subscription at INFO by default; the others log nothing per event.
      echo "RUST_LOG=warn ${PIN[*]} $bin --config loadtest/peers/sockudo.json" >>"$COMMANDS"
      RUST_LOG=warn "${PIN[@]}" "$bin" --config loadtest/peers/sockudo.json >"$log" 2>&1 &
      SERVER_PID=$!
      ADDR=127.0.0.1:6003
      ;;
    soketi)
      local node="$PEERS/soketi/node_modules/.bin/node" js="$PEERS/soketi/node_modules/@soketi/soketi/bin/server.js"
      [[ -x "$node" && -f "$js" ]] || { echo "soketi missing under $PEERS/soketi (see loadtest/peers/README.md)" >&2; return 1; }
      echo "${PIN[*]} $node $js start --config=loadtest/peers/soketi.json" >>"$COMMANDS"
      "${PIN[@]}" "$node" "$js" start --config=loadtest/peers/soketi.json >"$log" 2>&1 &
      SERVER_PID=$!
      ADDR=127.0.0.1:6002
      ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
  [[ -n "$ADDR" ]] && wait_port "$ADDR" || { echo "$1 did not start:"; tail -20 "$log"; return 1; }
}

lt() { # label, then ringcast-loadtest arguments
  local label="$1"; shift
  echo "ringcast-loadtest $*" >>"$COMMANDS"
  echo "==> [$label] ringcast-loadtest $*" >&2
  timeout 3600 "$LT" "$@" || echo "[$label] ringcast-loadtest exited with $? (its results, if any, are kept)" >&2
}

busy() {
  read -r _ u n s i w q sq st _ < /proc/stat; local t0=$((u+n+s+i+w+q+sq+st)) i0=$((i+w))
  sleep 1
  read -r _ u n s i w q sq st _ < /proc/stat; local t1=$((u+n+s+i+w+q+sq+st)) i1=$((i+w))
  echo "$(( 100 - 100 * (i1 - i0) / (t1 - t0) ))%"
}

IFS=',' read -r -a LIST <<<"$SERVERS"
BUSY=()
for srv in "${LIST[@]}"; do
  echo "== $srv | $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  BUSY+=("$srv: machine busy $(busy) before, load average $(cut -d' ' -f1-3 /proc/loadavg)")
  start_server "$srv" || { stop_server; continue; }
  common=(--ws-url "ws://$ADDR" --server-pid "$SERVER_PID" --label "$srv" --quiet "${GEN[@]}")
  lt "$srv" sweep "${common[@]}" "${SWEEP[@]}" --out "$OUT/$srv/sweep"
  lt "$srv" fanout "${common[@]}" "${POINT[@]}" --json "$OUT/$srv/fanout.json"
  lt "$srv" connect "${common[@]}" "${CONNECT[@]}" --json "$OUT/$srv/connect.json"
  lt "$srv" sweep "${common[@]}" --publish rest "${REST[@]}" --out "$OUT/$srv/rest"
  lt "$srv" presence --ws-url "ws://$ADDR" --label "$srv" --quiet "${GEN[@]}" "${PRESENCE[@]}" --json "$OUT/$srv/presence.json"
  stop_server
done

# Machine, versions and commands for the report.
LT="$LT" python3 - "$OUT" "$SERVERS" "$GRID" "$PEERS" "${BUSY[@]}" <<'EOF'
import json, os, platform, subprocess, sys, datetime
out, servers, grid, peers, busy = sys.argv[1], sys.argv[2].split(','), sys.argv[3], sys.argv[4], sys.argv[5:]
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        return f"? ({e})"
model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
mem = next((l.split(':', 1)[1].strip() for l in open('/proc/meminfo') if l.startswith('MemTotal')), '?')
nofile = sh('bash', '-c', 'ulimit -Hn')
soketi_pkg = os.path.join(peers, 'soketi/node_modules/@soketi/soketi/package.json')
versions = {
    'ringcast': sh('git', 'describe', '--always', '--dirty'),
    'sockudo': sh(os.path.join(peers, 'sockudo/bin/sockudo'), '--version') or '?',
    'soketi': json.load(open(soketi_pkg))['version'] if os.path.exists(soketi_pkg) else '?',
    'node (soketi)': sh(os.path.join(peers, 'soketi/node_modules/.bin/node'), '--version'),
    'ringcast-loadtest': sh(os.environ['LT'], '--version'),
}
meta = {
    'date': datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
    'servers': servers,
    'grid': grid,
    'machine': {
        'CPU': f"{os.cpu_count()} x {model}",
        'memory': mem,
        'kernel': platform.release(),
        'open files per process (hard)': nofile,
        'before each server': '; '.join(busy),
    },
    'versions': versions,
    'commands': [l.rstrip('\n') for l in open(os.path.join(out, 'commands.txt'))],
}
json.dump(meta, open(os.path.join(out, 'meta.json'), 'w'), indent=2)
EOF
"$LT" compare --out "$OUT"

#!/usr/bin/env bash
# Runs the measurements behind docs/benchmarks.md against the release build and writes the raw
# results to loadtest/results/ (JSON, CSV, SVG). Every run is bounded by `timeout`.
#
#   cargo build --release --bin ringcast && cargo build --release -p ringcast-loadtest
#   loadtest/run-benchmarks.sh [all|fanout10k|fanout1k|connect|rest|presence]...
#
# Each run starts its own Ringcast (2 workers, loadtest/ringcast-bench.toml; RINGCAST_BENCH_WORKERS=4
# for the oversubscribed sweep of issue #9) on 127.0.0.1:0 and stops it afterwards; `--floor` runs spawn the floor server as a child of the generator.
# The load average before each run is printed and kept in the JSON (load_avg_before).
set -euo pipefail
cd "$(dirname "$0")/.."
RC=target/release/ringcast
LT=target/release/ringcast-loadtest
OUT=loadtest/results
mkdir -p "$OUT"
LOG="$(mktemp -d)"
[[ -x $RC && -x $LT ]] || { echo "build the release binaries first" >&2; exit 1; }

SERVER_PID=""
start_ringcast() {
  "$RC" --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers "${RINGCAST_BENCH_WORKERS:-2}" >"$LOG/ringcast.out" 2>"$LOG/ringcast.err" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$LOG/ringcast.out" 2>/dev/null && break; sleep 0.1; done
  ADDR="$(grep -o '127\.0\.0\.1:[0-9]*' "$LOG/ringcast.out" | head -n1)"
  [[ -n "$ADDR" ]] || { cat "$LOG/ringcast.err"; exit 1; }
}
stop_ringcast() {
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_ringcast EXIT
# Machine CPU busy over one second before a run (nothing of ours is running then): what the
# other tenants of the machine use. The load average also counts the previous run's threads.
busy() {
  read -r _ u n s i w q sq st _ < /proc/stat; local t0=$((u+n+s+i+w+q+sq+st)) i0=$((i+w))
  sleep 1
  read -r _ u n s i w q sq st _ < /proc/stat; local t1=$((u+n+s+i+w+q+sq+st)) i1=$((i+w))
  echo "$(( 100 - 100 * (i1 - i0) / (t1 - t0) ))%"
}
note() { echo; echo "== $* | $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg), machine busy before: $(busy)"; }

fanout10k() {
  note "fan-out sweep: 10,000 subscribers, 1 channel, 100 B, floor in the same run"
  start_ringcast
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SERVER_PID" --label ringcast --floor \
    --subscribers 10000 --channels 1 --payload 100 --rates 5,10,15,20,30,40,60,80,100 --duration 5 \
    --p99-budget 200 --stop-after 3 --quiet --out "$OUT/fanout-10k" --json "$OUT/fanout-10k/sweep.json"
  stop_ringcast
}
fanout1k() {
  note "fan-out: 1,000 subscribers, 100 events/s, 100 B, 10 s, floor in the same run"
  start_ringcast
  timeout 300 "$LT" fanout --ws-url "ws://$ADDR" --server-pid "$SERVER_PID" --label ringcast --floor \
    --subscribers 1000 --channels 1 --payload 100 --rate 100 --duration 10 --quiet --json "$OUT/fanout-1k.json"
  stop_ringcast
}
connect() {
  # 19,000: this machine's RLIMIT_NOFILE hard limit is 20,000 per process (not raisable here).
  note "connect: 19,000 idle connections, floor in the same run"
  start_ringcast
  timeout 600 "$LT" connect --ws-url "ws://$ADDR" --server-pid "$SERVER_PID" --label ringcast --floor \
    --connections 19000 --concurrency 256 --hold 5 --quiet --json "$OUT/connect-19k.json"
  stop_ringcast
}
rest() {
  note "REST publishing sweep: signed triggers to a 10-subscriber channel, floor in the same run"
  start_ringcast
  timeout 1200 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SERVER_PID" --label ringcast --floor \
    --publish rest --publishers 4 --rest-inflight 64 --subscribers 10 --channels 1 --payload 100 \
    --rates 5000,10000,20000,30000,40000,50000,60000,80000,100000 --duration 5 --p99-budget 200 --stop-after 2 --quiet \
    --out "$OUT/rest" --json "$OUT/rest/sweep.json"
  stop_ringcast
}
presence() {
  note "presence churn: 20 residents, 40 churners, 100 joins/s, 10 s"
  start_ringcast
  timeout 300 "$LT" presence --ws-url "ws://$ADDR" --label ringcast --residents 20 --churners 40 \
    --rate 100 --hold-ms 200 --duration 10 --quiet --json "$OUT/presence.json"
  stop_ringcast
}

what=("$@")
[[ ${#what[@]} -eq 0 || "${what[0]}" == all ]] && what=(fanout1k presence connect rest fanout10k)
for w in "${what[@]}"; do "$w"; done

#!/usr/bin/env bash
# The cluster figures of docs/benchmarks.md: Ringcast nodes on one machine over a real
# redis-server (the broker shares the cores with the nodes and the generator).
#
#   cargo build --release --bin ringcast && cargo build --release -p ringcast-loadtest
#   loadtest/run-cluster-benchmarks.sh [all|fanout1k|knee10k|rest|idle]...
#
# fanout1k: 1,000 subscribers spread over 3 nodes, 100 events/s, beside one node in the same run;
#           server CPU (nodes + redis-server, from /proc) per delivery, broker messages per event
#           (sum of ringcast_cluster_published_total + _received_total over the nodes).
# knee10k:  10,000 subscribers over 3 nodes, rate sweep, knee at p99 <= 200 ms.
# rest:     signed REST triggers through node 0, 10 subscribers spread over the 3 nodes.
# idle:     idle connections held by 5 nodes together (connections in 5 generator processes,
#           since one process may open at most 20,000 files here), RSS per connection.
# Every node runs with --workers 1 (3 or 5 nodes on 2 cores); the single node beside it with 2.
# Results (JSON) go to loadtest/results/cluster/. Every run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
RC=target/release/ringcast
LT=target/release/ringcast-loadtest
OUT=loadtest/results/cluster
mkdir -p "$OUT"
[[ -x $RC && -x $LT ]] || { echo "build the release binaries first" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_line() { # file pattern
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
note() { echo; echo "== $* | $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
cpu_ticks() { # pid... -> utime+stime summed (clock ticks)
  local t=0 p
  for p in "$@"; do
    # fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the command name
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
metric_sum() { # name port...
  local name="$1" t=0 p v; shift
  for p in "$@"; do
    v=$(curl -s "http://127.0.0.1:$p/metrics" | awk -v n="$name" '$1 ~ "^"n"({|$)" {s += $2} END {print s + 0}')
    t=$(python3 -c "print(int($t + $v))")
  done
  echo "$t"
}

REDIS_PID="" REDIS_PORT=""
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  wait_line "$WORK/redis.log" "Ready to accept connections"
}
NODE_PIDS=() NODE_PORTS=()
start_nodes() { # count workers
  NODE_PIDS=() NODE_PORTS=()
  local i
  for i in $(seq 0 $(($1 - 1))); do
    "$RC" --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers "$2" \
      --cluster "redis://127.0.0.1:$REDIS_PORT" --node-id "bench-n$i" >"$WORK/n$i.out" 2>"$WORK/n$i.err" &
    NODE_PIDS+=($!); PIDS+=($!)
    wait_line "$WORK/n$i.out" "ringcast: cluster"
    NODE_PORTS+=("$(grep -o '127\.0\.0\.1:[0-9]*' "$WORK/n$i.out" | head -n1 | cut -d: -f2)")
  done
}
stop_nodes() { for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; NODE_PIDS=(); }
stop_redis() { kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
urls() { local u="" p; for p in "${NODE_PORTS[@]}"; do u="${u:+$u,}ws://127.0.0.1:$p"; done; echo "$u"; }

fanout1k() {
  note "1,000 subscribers over 3 nodes, 100 events/s, 100 B, 10 s (beside 1 node, 2 workers)"
  start_redis
  start_nodes 3 1
  local ports=("${NODE_PORTS[@]}") c0 c1 m0 m1
  c0=$(cpu_ticks "${NODE_PIDS[@]}" "$REDIS_PID")
  m0=$(( $(metric_sum ringcast_cluster_published_total "${ports[@]}") + $(metric_sum ringcast_cluster_received_total "${ports[@]}") ))
  timeout 300 "$LT" fanout --ws-url "$(urls)" --label "cluster-3" --subscribers 1000 --channels 1 \
    --payload 100 --rate 100 --duration 10 --quiet --json "$OUT/fanout-1k-cluster3.json"
  c1=$(cpu_ticks "${NODE_PIDS[@]}" "$REDIS_PID")
  m1=$(( $(metric_sum ringcast_cluster_published_total "${ports[@]}") + $(metric_sum ringcast_cluster_received_total "${ports[@]}") ))
  python3 - "$OUT/fanout-1k-cluster3.json" "$c0" "$c1" "$m0" "$m1" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
path, c0, c1, m0, m1, hz = sys.argv[1], *map(int, sys.argv[2:])
r = json.load(open(path))
# events published in the measured phase: 100/s x 10 s
events = 100 * 10
deliveries = 1000 * events
extra = {"cluster_cpu_s": (c1 - c0) / hz, "cluster_cpu_us_per_delivery": (c1 - c0) / hz * 1e6 / deliveries,
         "broker_messages": m1 - m0, "broker_messages_per_event": (m1 - m0) / events}
r["cluster"] = extra
json.dump(r, open(path, "w"), indent=1)
print("cluster (3 nodes + redis):", json.dumps(extra))
EOF
  stop_nodes
  stop_redis
  note "the same on one node (2 workers), no broker"
  "$RC" --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers 2 >"$WORK/single.out" 2>"$WORK/single.err" &
  local sp=$!; PIDS+=("$sp")
  wait_line "$WORK/single.out" "listening on"
  local addr; addr="$(grep -o '127\.0\.0\.1:[0-9]*' "$WORK/single.out" | head -n1)"
  timeout 300 "$LT" fanout --ws-url "ws://$addr" --server-pid "$sp" --label "single" --subscribers 1000 \
    --channels 1 --payload 100 --rate 100 --duration 10 --quiet --json "$OUT/fanout-1k-single.json"
  kill "$sp"; wait "$sp" 2>/dev/null || true
}

knee10k() {
  note "10,000 subscribers over 3 nodes: rate sweep, knee at p99 <= 200 ms"
  start_redis
  start_nodes 3 1
  timeout 1500 "$LT" sweep --ws-url "$(urls)" --label cluster-3 --subscribers 10000 --channels 1 \
    --payload 100 --rates 5,10,15,20,30,40,60,80,100 --duration 5 --p99-budget 200 --stop-after 2 \
    --quiet --out "$OUT/knee-10k" --json "$OUT/knee-10k/sweep.json"
  stop_nodes
  stop_redis
}

rest() {
  note "signed REST triggers through node 0, 10 subscribers over 3 nodes"
  start_redis
  start_nodes 3 1
  timeout 1200 "$LT" sweep --ws-url "$(urls)" --api-url "http://127.0.0.1:${NODE_PORTS[0]}" --label cluster-3 \
    --publish rest --publishers 4 --rest-inflight 64 --subscribers 10 --channels 1 --payload 100 \
    --rates 2000,5000,10000,20000,30000,40000,60000 --duration 5 --p99-budget 200 --stop-after 2 --quiet \
    --out "$OUT/rest" --json "$OUT/rest/sweep.json"
  stop_nodes
  stop_redis
}

idle() {
  note "idle connections held by 5 nodes together (5 generator processes)"
  start_redis
  start_nodes 5 1
  local r0; r0=$(rss_kib "${NODE_PIDS[@]}")
  timeout 900 "$LT" connect --ws-url "$(urls)" --label cluster-5 --procs 5 --connections 90000 \
    --concurrency 256 --hold 5 --quiet --json "$OUT/idle-90k.json" &
  local lt=$!
  # RSS while the connections are held: sample until the generator ends, keep the peak.
  local peak=0 r
  while kill -0 "$lt" 2>/dev/null; do
    r=$(rss_kib "${NODE_PIDS[@]}" 2>/dev/null || echo 0); ((r > peak)) && peak=$r
    sleep 1
  done
  wait "$lt" || true
  python3 - "$OUT/idle-90k.json" "$r0" "$peak" <<'EOF'
import json, sys
path, r0, peak = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(path))
r["cluster"] = {"nodes": 5, "rss_kib_before": r0, "rss_kib_peak": peak}
json.dump(r, open(path, "w"), indent=1)
print("5 nodes: RSS before", r0, "KiB, peak", peak, "KiB")
EOF
  stop_nodes
  stop_redis
}

what=("$@")
[[ ${#what[@]} -eq 0 || "${what[0]}" == all ]] && what=(fanout1k rest knee10k idle)
for w in "${what[@]}"; do "$w"; done

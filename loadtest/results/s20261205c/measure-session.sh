#!/usr/bin/env bash
# The third 2026-12-05 measurement session: the proportional coalescing window
# (`flush_window_ratio_pct`) and the harness's dedicated publisher thread (docs/benchmarks.md
# "Proportional coalescing window"). Kept as it ran. Needs release builds of ringcast and
# ringcast-loadtest and the C floor built from ../shared/bench/fanfloor (FANFLOOR=path).
#   bash loadtest/results/s20261205c/measure-session.sh [step...]
# Steps in the order they ran: cfloor main ratio pinned onek sweep cfloorsweep.
set -uo pipefail
cd "$(dirname "$0")/../../.."
S=loadtest/results/s20261205c; mkdir -p "$S"
RC=${RC:-target/release/ringcast}; LT=target/release/ringcast-loadtest
FF=${FANFLOOR:-/tmp/fanfloor}
LOG=$(mktemp -d)
# The bench config with a given flush_window_ratio_pct (the rest as loadtest/ringcast-bench.toml).
cfg() { local f="$LOG/bench-r$1.toml"; { echo "flush_window_ratio_pct = $1"; cat loadtest/ringcast-bench.toml; } > "$f"; echo "$f"; }
busy() { read -r _ u n s i w q sq st _ < /proc/stat; local t0=$((u+n+s+i+w+q+sq+st)) i0=$((i+w)); sleep 1
  read -r _ u n s i w q sq st _ < /proc/stat; local t1=$((u+n+s+i+w+q+sq+st)) i1=$((i+w)); echo "$(( 100 - 100 * (i1 - i0) / (t1 - t0) ))%"; }
note() { echo; echo "== $* | $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) busy-before $(busy)"; }
SP=""
start() { # start BIN CONFIG WORKERS [taskset-cpus]
  local bin=$1 cfg=$2 w=$3 pin=${4:-}
  local pre=(); [[ -n $pin ]] && pre=(taskset -c "$pin")
  # Emptied here, not by the background job's redirection: that runs in the child after the
  # fork, so the wait below could otherwise read the previous server's "listening on".
  : >"$LOG/rc.out"; : >"$LOG/rc.err"
  "${pre[@]}" "$bin" --listen 127.0.0.1:0 --config "$cfg" --workers "$w" --data-dir "$(mktemp -d)" >"$LOG/rc.out" 2>"$LOG/rc.err" &
  SP=$!
  for _ in $(seq 1 300); do grep -q "listening on" "$LOG/rc.out" 2>/dev/null && break; sleep 0.1; done
  ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$LOG/rc.out" | head -n1); [[ -n $ADDR ]] || { cat "$LOG/rc.err"; return 1; }
}
start_ok() { start "$@" || { echo "SKIPPED: the server did not start"; return 1; }; }
stop() { [[ -n $SP ]] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null; SP=""; }
trap stop EXIT
fan() { # fan LABEL SUBS RATE DUR [extra loadtest args]
  local label=$1 n=$2 r=$3 d=$4; shift 4
  timeout 600 "$LT" fanout --ws-url "ws://$ADDR" --server-pid "$SP" --label "$label" \
    --subscribers "$n" --channels 1 --payload 100 --rate "$r" --duration "$d" --quiet --json "$S/$label.json" "$@" 2>&1 | tee "$S/$label.txt"
  curl -s "http://$ADDR/metrics" | grep -E "^ringcast_(flush|slow_consumer|closed)" > "$S/$label.metrics" || true
}
cfloor() { note "C floor $*"; $FF "$@" 2>&1 | tee -a "$S/cfloor.txt"; }

step_cfloor() { # the floor's own layout (PIN=1) and unpinned (PIN=0), as Ringcast's two layouts
  for i in 1 2 3; do cfloor 10000 150 5 1 1; cfloor 10000 150 5 1 0; done
  for i in 1 2; do cfloor 1000 100 10; done
}
step_main() { # the issue's layout with the defaults: 2 workers, generator unpinned on the same 2 cores
  for i in 1 2 3 4 5 6; do
    local fl=(); [[ $i -le 2 ]] && fl=(--floor)
    note "ringcast 10k x 150 run $i ${fl[*]}"; start_ok $RC loadtest/ringcast-bench.toml 2 && fan rc-10k-150-$i 10000 150 5 "${fl[@]}"; stop
  done
}
step_ratio() { # flush_window_ratio_pct 0 (the fixed 1 ms window, as before), 25 (default), 50; alternating
  for i in 1 2 3; do for r in 0 25 50; do
    note "ratio $r 10k x 150 run $i"; start_ok $RC "$(cfg $r)" 2 && fan ratio$r-10k-150-$i 10000 150 5; stop
  done; done
}
step_pinned() { # the C floor's layout: server on CPU 0 (1 worker), generator on CPU 1
  for i in 1 2 3; do for r in 0 25; do
    note "pinned ratio $r 10k x 150 run $i"; start_ok $RC "$(cfg $r)" 1 0 && fan pin-ratio$r-10k-150-$i 10000 150 5 --cpus 1; stop
  done; done
}
step_onek() {
  for i in 1 2; do for r in 0 25; do
    note "ratio $r 1k x 100 run $i"; start_ok $RC "$(cfg $r)" 2 && fan ratio$r-1k-100-$i 1000 100 10; stop
  done; done
}
sweep() { # sweep LABEL CONFIG WORKERS [pin]
  local label=$1 c=$2 w=$3 pin=${4:-}; local extra=(); [[ -n $pin ]] && extra=(--cpus 1)
  note "sweep 10k $label"; start_ok $RC "$c" $w $pin || return 0
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SP" --label "$label" "${extra[@]}" \
    --subscribers 10000 --channels 1 --payload 100 --rates 60,100,150,200,250,300 --duration 5 \
    --p99-budget 200 --stop-after 2 --quiet --out "$S/sweep-$label" --json "$S/sweep-$label/sweep.json" 2>&1 | tee "$S/sweep-$label.txt"; stop
}
step_sweep() { sweep shared-2w loadtest/ringcast-bench.toml 2; sweep shared-2w-ratio0 "$(cfg 0)" 2; sweep pinned-1w loadtest/ringcast-bench.toml 1 0; }
step_cfloorsweep() { for r in 60 100 150 200 250 300; do cfloor 10000 $r 5; done; }

steps=("$@"); [[ ${#steps[@]} -gt 0 ]] || steps=(cfloor main ratio pinned onek sweep cfloorsweep)
for s in "${steps[@]}"; do "step_$s"; done

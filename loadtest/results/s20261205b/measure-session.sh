#!/usr/bin/env bash
# The second 2026-12-05 measurement session (after the flush pass's slices, run buffer and
# prefetch; docs/benchmarks.md "2026-12-05 afternoon"), kept as it ran. Needs: release builds of ringcast and ringcast-loadtest; the C floor
# built from ../shared/bench/fanfloor (FANFLOOR=path); for `before`, a release build of the
# previous commit (BEFORE_BIN=path); for `tls`, PKI=dir with ca.pem, cert.pem, key.pem
# (a certificate for 127.0.0.1).
#   bash loadtest/results/s20261205b/measure-session.sh [step...]
# Steps in the order they ran: cfloor main pinned before sweep sweep4 cfloorsweep, then rerun
# (two `pinned` runs whose server had not printed its address within the 10 s `start` allows,
# and two more shared runs).
set -uo pipefail
cd "$(dirname "$0")/../../.."
S=loadtest/results/s20261205b; mkdir -p "$S"
RC=${RC:-target/release/ringcast}; LT=target/release/ringcast-loadtest
FF=${FANFLOOR:-/tmp/fanfloor}
LOG=$(mktemp -d)
busy() { read -r _ u n s i w q sq st _ < /proc/stat; local t0=$((u+n+s+i+w+q+sq+st)) i0=$((i+w)); sleep 1
  read -r _ u n s i w q sq st _ < /proc/stat; local t1=$((u+n+s+i+w+q+sq+st)) i1=$((i+w)); echo "$(( 100 - 100 * (i1 - i0) / (t1 - t0) ))%"; }
note() { echo; echo "== $* | $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) busy-before $(busy)"; }
SP=""
start() { # start BIN CONFIG WORKERS [taskset-cpus]
  local bin=$1 cfg=$2 w=$3 pin=${4:-}
  local pre=(); [[ -n $pin ]] && pre=(taskset -c "$pin")
  "${pre[@]}" "$bin" --listen 127.0.0.1:0 --config "$cfg" --workers "$w" --data-dir "$(mktemp -d)" >"$LOG/rc.out" 2>"$LOG/rc.err" &
  SP=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$LOG/rc.out" 2>/dev/null && break; sleep 0.1; done
  ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$LOG/rc.out" | head -n1); [[ -n $ADDR ]] || { cat "$LOG/rc.err"; return 1; }
}
stop() { [[ -n $SP ]] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null; SP=""; }
trap stop EXIT
fan() { # fan LABEL SUBS RATE DUR [extra loadtest args]
  local label=$1 n=$2 r=$3 d=$4; shift 4
  timeout 600 "$LT" fanout --ws-url "ws://$ADDR" --server-pid "$SP" --label "$label" \
    --subscribers "$n" --channels 1 --payload 100 --rate "$r" --duration "$d" --quiet --json "$S/$label.json" "$@" 2>&1 | tee "$S/$label.txt"
  curl -s "http://$ADDR/metrics" | grep -E "^ringcast_(flush|slow_consumer|closed)" > "$S/$label.metrics" || true
}
cfloor() { note "C floor $*"; $FF "$@" 2>&1 | tee -a "$S/cfloor.txt"; }

step_cfloor() { for i in 1 2 3; do cfloor 10000 150 5; done; for i in 1 2; do cfloor 1000 100 10; done; }
step_main() { # the issue's layout: 2 workers, generator unpinned on the same 2 cores
  for i in 1 2 3 4; do
    local fl=(); [[ $i -le 2 ]] && fl=(--floor)
    note "ringcast 10k x 150 run $i ${fl[*]}"; start $RC loadtest/ringcast-bench.toml 2; fan rc-10k-150-$i 10000 150 5 "${fl[@]}"; stop
  done
  for i in 1 2; do
    local fl=(); [[ $i -le 1 ]] && fl=(--floor)
    note "ringcast 1k x 100 run $i ${fl[*]}"; start $RC loadtest/ringcast-bench.toml 2; fan rc-1k-100-$i 1000 100 10 "${fl[@]}"; stop
  done
}
step_pinned() { # the C floor's layout: server on CPU 0 (1 worker), generator on CPU 1 (1 thread)
  for i in 1 2 3; do
    note "pinned 10k x 150 run $i"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-10k-150-$i 10000 150 5 --cpus 1; stop
  done
  for i in 1 2; do
    note "pinned 1k x 100 run $i"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-1k-100-$i 1000 100 10 --cpus 1; stop
  done
}
step_before() { # release build of 7f87d68, the commit before the change
  for i in 1 2; do
    note "before 10k x 150 run $i"; start ${BEFORE_BIN:-/tmp/ringcast-before} loadtest/ringcast-bench.toml 2; fan before-10k-150-$i 10000 150 5; stop
    note "before pinned 10k x 150 run $i"; start ${BEFORE_BIN:-/tmp/ringcast-before} loadtest/ringcast-bench.toml 1 0; fan before-pin-10k-150-$i 10000 150 5 --cpus 1; stop
  done
  note "before 1k x 100"; start ${BEFORE_BIN:-/tmp/ringcast-before} loadtest/ringcast-bench.toml 2; fan before-1k-100 1000 100 10; stop
}
sweep() { # sweep LABEL WORKERS [pin]
  local label=$1 w=$2 pin=${3:-}; local extra=(); [[ -n $pin ]] && extra=(--cpus 1)
  note "sweep 10k $label"; start $RC loadtest/ringcast-bench.toml $w $pin
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SP" --label "$label" "${extra[@]}" \
    --subscribers 10000 --channels 1 --payload 100 --rates 60,100,150,200,250,300 --duration 5 \
    --p99-budget 200 --stop-after 2 --quiet --out "$S/sweep-$label" --json "$S/sweep-$label/sweep.json" 2>&1 | tee "$S/sweep-$label.txt"; stop
}
step_sweep() { sweep shared-2w 2; sweep pinned-1w 1 0; }
step_sweep4() { sweep shared-4w 4; }
step_cfloorsweep() { for r in 60 100 150 200 250 300; do cfloor 10000 $r 5; done; }
step_rerun() {
  note "pinned 10k x 150 run 2 (rerun)"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-10k-150-2 10000 150 5 --cpus 1; stop
  note "pinned 1k x 100 run 2 (rerun)"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-1k-100-2 1000 100 10 --cpus 1; stop
  for i in 5 6; do note "ringcast 10k x 150 run $i"; start $RC loadtest/ringcast-bench.toml 2; fan rc-10k-150-$i 10000 150 5; stop; done
  cfloor 10000 150 5
}
steps=("$@"); [[ ${#steps[@]} -eq 0 ]] && steps=(cfloor main pinned before sweep sweep4 cfloorsweep)
for s in "${steps[@]}"; do "step_$s"; done

#!/usr/bin/env bash
# The 2026-12-05 measurement session behind docs/benchmarks.md ("2026-12-05: figures on a quiet
# machine"), kept as it ran. Needs: release builds of ringcast and ringcast-loadtest; the C floor
# built from ../shared/bench/fanfloor (FANFLOOR=path); for `before`, a release build of the
# previous commit (BEFORE_BIN=path); for `tls`, PKI=dir with ca.pem, cert.pem, key.pem
# (a certificate for 127.0.0.1).
#   bash loadtest/results/s20261205/measure-session.sh [step...]
# Steps in the order they ran: cfloor main gen before window0 sweep sweep4 tls abuse cfloor,
# then pinned plain1k main2, then wcmp sweepb. Raw output: session-*.log beside this file.
set -uo pipefail
cd "$(dirname "$0")/../../.."
S=loadtest/results/s20261205; mkdir -p "$S"
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

step_cfloor() { for i in 1 2; do cfloor 10000 150 5; cfloor 1000 100 10; done; }
step_main() {
  for i in 1 2; do
    note "ringcast 10k x 150 --floor run $i"; start $RC loadtest/ringcast-bench.toml 2; fan rc-10k-150-$i 10000 150 5 --floor; stop
    note "ringcast 1k x 100 --floor run $i"; start $RC loadtest/ringcast-bench.toml 2; fan rc-1k-100-$i 1000 100 10 --floor; stop
  done
}
step_before() {
  note "before (1246d52) 10k x 150"; start ${BEFORE_BIN:-/tmp/ringcast-before} loadtest/ringcast-bench.toml 2; fan before-10k-150 10000 150 5; stop
  note "before (1246d52) 1k x 100"; start ${BEFORE_BIN:-/tmp/ringcast-before} loadtest/ringcast-bench.toml 2; fan before-1k-100 1000 100 10; stop
}
step_gen() { # generator CPU with one thread (the C client has one), epoll and tasks
  for m in epoll tasks; do
    note "gen $m 10k x 150 --threads 1"; start $RC loadtest/ringcast-bench.toml 2; fan gen-$m-10k-150 10000 150 5 --threads 1 --receive $m; stop
    note "gen $m 1k x 100 --threads 1"; start $RC loadtest/ringcast-bench.toml 2; fan gen-$m-1k-100 1000 100 10 --threads 1 --receive $m; stop
  done
}
step_window0() {
  { echo "flush_window_us = 0"; cat loadtest/ringcast-bench.toml; } > "$LOG/w0.toml"
  note "window 0: 10k x 150"; start $RC "$LOG/w0.toml" 2; fan w0-10k-150 10000 150 5; stop
  note "window 0: 1k x 100"; start $RC "$LOG/w0.toml" 2; fan w0-1k-100 1000 100 10; stop
}
step_sweep() {
  note "sweep 10k, 2 workers, --floor"; start $RC loadtest/ringcast-bench.toml 2
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SP" --label ringcast --floor \
    --subscribers 10000 --channels 1 --payload 100 --rates 10,20,40,60,80,100,150 --duration 5 \
    --p99-budget 200 --stop-after 2 --quiet --out "$S/sweep-10k" --json "$S/sweep-10k/sweep.json" 2>&1 | tee "$S/sweep-10k.txt"; stop
  for r in 10 20 40 60 80 100; do cfloor 10000 $r 5; done
}
step_sweep4() {
  note "sweep 10k, 4 workers on 2 cores"; start $RC loadtest/ringcast-bench.toml 4
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SP" --label ringcast-4w \
    --subscribers 10000 --channels 1 --payload 100 --rates 10,20,40,60,80,100,150 --duration 5 \
    --p99-budget 200 --stop-after 2 --quiet --out "$S/sweep-10k-4w" --json "$S/sweep-10k-4w/sweep.json" 2>&1 | tee "$S/sweep-10k-4w.txt"; stop
}
step_tls() { # server on CPU 0, generator on CPU 1
  sed "s#^\[tls\].*##" loadtest/ringcast-bench.toml > "$LOG/plain.toml"
  { cat "$LOG/plain.toml"; printf '\n[tls]\ncert = "${PKI:-/tmp/pki}/cert.pem"\nkey = "${PKI:-/tmp/pki}/key.pem"\n'; } > "$LOG/tls.toml"
  for m in plain tls; do
    local sch=ws extra=(); [[ $m == tls ]] && { sch=wss; extra=(--tls-ca ${PKI:-/tmp/pki}/ca.pem); }
    for spec in "1000 100 10" "10000 60 5"; do set -- $spec
      note "$m $1 x $2 pinned"; start $RC "$LOG/$m.toml" 1 0
      timeout 600 "$LT" fanout --ws-url "$sch://$ADDR" "${extra[@]}" --cpus 1 --server-pid "$SP" --label "$m-$1-$2" \
        --subscribers $1 --channels 1 --payload 100 --rate $2 --duration $3 --quiet --json "$S/$m-$1-$2.json" 2>&1 | tee "$S/$m-$1-$2.txt"; stop
    done
  done
}
step_abuse() {
  note "abuse pinned: server CPU 0, harness CPU 1"; start $RC loadtest/abuse.toml 1 0
  timeout 900 taskset -c 1 "$LT" abuse --ws-url "ws://$ADDR" --server-pid "$SP" --label ringcast --attack-cpus 1 --honest-cpus 1 \
    --subscribers 1000 --rate 100 --duration 15 --abuse-connections 50 --idle-connections 2000 \
    --json "$S/abuse.json" 2>&1 | tee "$S/abuse.txt"; stop
}
step_pinned() { # like the C floor: server on CPU 0 (1 worker), generator on CPU 1 (1 thread)
  for i in 1 2; do
    note "pinned 10k x 150 run $i"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-10k-150-$i 10000 150 5 --cpus 1; stop
    note "pinned 1k x 100 run $i"; start $RC loadtest/ringcast-bench.toml 1 0; fan pin-1k-100-$i 1000 100 10 --cpus 1; stop
  done
}
step_plain1k() {
  note "plain 1000 x 100 pinned (rerun)"; start $RC loadtest/ringcast-bench.toml 1 0
  timeout 600 "$LT" fanout --ws-url "ws://$ADDR" --cpus 1 --server-pid "$SP" --label "plain-1000-100" \
    --subscribers 1000 --channels 1 --payload 100 --rate 100 --duration 10 --quiet --json "$S/plain-1000-100.json" 2>&1 | tee "$S/plain-1000-100.txt"; stop
}
step_main2() {
  for i in 3 4; do
    note "ringcast 10k x 150 --floor run $i"; start $RC loadtest/ringcast-bench.toml 2; fan rc-10k-150-$i 10000 150 5 --floor; stop
  done
  cfloor 10000 150 5
}
step_sweepb() {
  note "sweep 10k, 2 workers (repeat, no floor)"; start $RC loadtest/ringcast-bench.toml 2
  timeout 1500 "$LT" sweep --ws-url "ws://$ADDR" --server-pid "$SP" --label ringcast-b \
    --subscribers 10000 --channels 1 --payload 100 --rates 60,80,100,120,150,200 --duration 5 \
    --p99-budget 200 --stop-after 2 --quiet --out "$S/sweep-10k-b" --json "$S/sweep-10k-b/sweep.json" 2>&1 | tee "$S/sweep-10k-b.txt"; stop
  for r in 150 200; do cfloor 10000 $r 5; done
}
step_wcmp() { # flush window 0 vs the default, alternating, 10k x 150
  { echo "flush_window_us = 0"; cat loadtest/ringcast-bench.toml; } > "$LOG/w0.toml"
  for i in 1 2 3; do
    note "wcmp window 0 run $i"; start $RC "$LOG/w0.toml" 2; fan wcmp-w0-$i 10000 150 5; stop
    note "wcmp window 1000 run $i"; start $RC loadtest/ringcast-bench.toml 2; fan wcmp-w1000-$i 10000 150 5; stop
  done
}
steps=("$@"); [[ ${#steps[@]} -eq 0 ]] && steps=(cfloor main gen before window0 sweep sweep4 tls abuse cfloor)
for s in "${steps[@]}"; do "step_$s"; done

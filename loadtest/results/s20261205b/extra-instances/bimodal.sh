#!/usr/bin/env bash
# run N shared 10k x 150 instances; per worker thread CPU ticks and p99
cd /work/main
RC=${RC:-/work/prof/bin-final}; LT=target/release/ringcast-loadtest
for i in $(seq 1 ${1:-6}); do
  O=/work/prof/bm$i; mkdir -p $O
  $RC --listen 127.0.0.1:0 --config loadtest/ringcast-bench.toml --workers 2 --data-dir $(mktemp -d) >$O/rc.out 2>$O/rc.err &
  SP=$!
  for _ in $(seq 1 200); do grep -q "listening on" $O/rc.out 2>/dev/null && break; sleep 0.1; done
  ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' $O/rc.out | head -n1)
  timeout 600 $LT fanout --ws-url ws://$ADDR --server-pid $SP --label bm$i --subscribers 10000 --channels 1 --payload 100 --rate 150 --duration 5 --quiet --json $O/run.json > $O/run.txt 2>&1
  th=$(for t in /proc/$SP/task/*; do echo "$(cat $t/comm):$(awk '{print $14+$15}' $t/stat)"; done | sort | tr '\n' ' ')
  kill $SP; wait $SP 2>/dev/null
  p99=$(grep -E "^bm" $O/run.txt | grep -v GENER | awk '{print $12}')
  echo "bm$i p99 $p99 threads $th"
done

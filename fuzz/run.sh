#!/usr/bin/env bash
# Coverage-guided fuzzing of every target with libFuzzer on the stable toolchain (no
# cargo-fuzz, no nightly): rustc's sanitizer-coverage pass instruments the code, libfuzzer-sys
# links libFuzzer (built from source with the system C++ compiler).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
#
# New inputs that raise coverage go to a work corpus (fuzz/libfuzzer/target/corpus/<target>/, or
# FUZZ_WORK_DIR); check the interesting ones in under fuzz/corpus/<target>/. A crash is written
# to fuzz/artifacts/<target>/, makes this script exit 1, and must become a corpus file (a
# regression test: fuzz/targets/tests/corpus.rs runs every corpus file in the normal test suite).
# scripts/test.sh (and so CI) runs every target for a few seconds with this script.
set -euo pipefail
cd "$(dirname "$0")/libfuzzer"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(ws_frames http_head pusher_message rest_request config proxy_header jwt)
fi
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$(pwd)/target}"
# An explicit --target keeps the instrumentation flags off build scripts and proc macros.
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --bins --target "$TRIPLE"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
# New inputs go to a work corpus beside the build (not the checked-in seeds, which are read only
# here); copy the interesting ones into fuzz/corpus/<target>/ by hand.
WORK="${FUZZ_WORK_DIR:-$CARGO_TARGET_DIR/corpus}"
FAILED_TARGETS=()
for t in "${TARGETS[@]}"; do
  mkdir -p "../artifacts/$t" "$WORK/$t"
  echo "==> $t for ${SECS}s"
  LOG="$WORK/$t.log"
  set +e
  "$BIN/$t" "$WORK/$t" "../corpus/$t" \
    -max_total_time="$SECS" -max_len=8192 -timeout=10 -rss_limit_mb=1024 \
    -artifact_prefix="../artifacts/$t/" -print_final_stats=1 >"$LOG" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+ +DONE|^stat::|ERROR|panicked|SUMMARY|^==[0-9]+==' "$LOG" || true
  if [ "$rc" -ne 0 ]; then
    echo "!! $t: libFuzzer exited $rc (a crash, a property failure or a timeout): the input is in fuzz/artifacts/$t/"
    FAILED_TARGETS+=("$t")
  fi
  # Coverage reached over the corpus now:
  "$BIN/$t" "$WORK/$t" "../corpus/$t" -runs=0 2>&1 | grep -oE 'INITED cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true
done
if [ ${#FAILED_TARGETS[@]} -ne 0 ]; then
  echo "fuzz: failures in ${FAILED_TARGETS[*]}"
  exit 1
fi

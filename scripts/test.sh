#!/usr/bin/env bash
# Ringcast: THE single command that runs the whole test suite (local and CI).
#
#   bash scripts/test.sh
#
# Steps: toolchain check -> brokers (apt-get redis-server/nats-server/openssl when missing)
#        -> cargo fmt --check -> clippy -D warnings -> cargo build --bin ringcast
#        -> Rust tests (cargo nextest, or cargo test if nextest is missing)
#        -> every fuzz target for 5 s (fuzz/run.sh: instrumented build, libFuzzer; fails on a crash)
#        -> npm ci in tests/js (only when node_modules is missing or stale)
#        -> apt-get install chromium when missing (the dashboard test drives it)
#        -> real-client JS tests (node --test) against target/debug/ringcast
#        -> pip install in a venv (tests/python/requirements.txt, only when changed)
#        -> Python SDK tests (pytest) against target/debug/ringcast.
# A failing step does not hide the others (except that the JS tests need the binary);
# the script prints a summary and exits non-zero if anything failed.
#
# Environment knobs:
#   RINGCAST_REST_TESTS=1   also run the JS tests listed in JS_TESTS_NEED_REST (none at present)
#   RINGCAST_JS_TESTS="a.test.mjs b.test.mjs"   run exactly these JS test files (names in tests/js/)
#   RINGCAST_SKIP_RUST=1    skip fmt/clippy/Rust tests and the fuzz step (still builds the binary); for iterating on JS tests
#   RINGCAST_SKIP_FUZZ=1    skip the brief fuzz run (fuzz/run.sh); RINGCAST_FUZZ_SECS=N to run each target N s
#   RINGCAST_BIN=/path      server binary for the JS tests (default: <target dir>/debug/ringcast)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

# ---------------------------------------------------------------------------------------------
# JS test files (in tests/js/) run by default. Edit these lists as the server grows.
JS_TESTS=(
  connect.test.mjs
  subscribe.test.mjs
  presence.test.mjs
  client-events.test.mjs
  connection-errors.test.mjs
  shutdown.test.mjs
  rest.test.mjs
  api-seed.test.mjs
  retained.test.mjs
  webhooks.test.mjs
  management.test.mjs
  dashboard.test.mjs
  # The cluster (issue 8): real redis-server / nats-server brokers (installed below when missing).
  # Cases that wait for the implementation are not registered (tests/js/lib/cluster-cases.mjs WAITING).
  cluster-redis.test.mjs
  cluster-nats.test.mjs
  cluster-faults-redis.test.mjs
  cluster-faults-nats.test.mjs
  cluster-topologies.test.mjs
  # Management changes replicated through the broker (issue 10), redis and nats.
  cluster-management.test.mjs
  lattestream.test.mjs
  activity.test.mjs
  user-socket.test.mjs
  origins.test.mjs
  tls.test.mjs
  # SSE streams: the eventsource npm package and Chromium's EventSource (playwright-core).
  sse.test.mjs
)
# Files that need a feature not built yet (run only with RINGCAST_REST_TESTS=1). None now.
JS_TESTS_NEED_REST=()
# ---------------------------------------------------------------------------------------------

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export NO_COLOR="${NO_COLOR:-1}"
export npm_config_update_notifier=false
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOG_DIR="$TARGET_DIR/test-logs"
mkdir -p "$LOG_DIR"

STEP_NAMES=()
STEP_RESULTS=()
STEP_SECS=()
FAILED=0

log() { printf '\n==> %s\n' "$*"; }

# run_step NAME LOGFILE CMD... : run CMD (output to terminal and LOGFILE), record the result.
run_step() {
  local name="$1" logfile="$2"
  shift 2
  log "$name"
  local t0=$SECONDS rc=0
  "$@" 2>&1 | tee "$logfile" || rc=$?
  record_step "$name" "$rc" $((SECONDS - t0))
  return "$rc"
}

record_step() {
  STEP_NAMES+=("$1")
  STEP_SECS+=("$3")
  if [[ "$2" == 0 ]]; then
    STEP_RESULTS+=("PASS")
  elif [[ "$2" == skip ]]; then
    STEP_RESULTS+=("SKIP")
  else
    STEP_RESULTS+=("FAIL (exit $2)")
    FAILED=1
  fi
}

# ---------------------------------------------------------------------------------------------
log "toolchain"
TOOLCHAIN_OK=1
need() {
  if command -v "$1" >/dev/null 2>&1; then
    printf '  %-14s %s\n' "$1" "$("$@" 2>&1 | head -n1)"
  else
    printf '  %-14s MISSING\n' "$1"
    TOOLCHAIN_OK=0
  fi
}
need cargo --version
need rustc --version
need node --version
need npm --version
need python3 --version
need timeout --version
for sub in fmt clippy; do
  if cargo "$sub" --version >/dev/null 2>&1; then
    printf '  %-14s %s\n' "cargo $sub" "$(cargo "$sub" --version 2>&1 | head -n1)"
  else
    printf '  %-14s MISSING (rustup component add %s)\n' "cargo $sub" "$([[ $sub == fmt ]] && echo rustfmt || echo clippy)"
    TOOLCHAIN_OK=0
  fi
done
HAVE_NEXTEST=0
if cargo nextest --version >/dev/null 2>&1; then
  HAVE_NEXTEST=1
  printf '  %-14s %s\n' "cargo nextest" "$(cargo nextest --version 2>&1 | head -n1)"
else
  printf '  %-14s not installed: falling back to cargo test\n' "cargo nextest"
fi
if command -v node >/dev/null 2>&1; then
  NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
  if ((NODE_MAJOR < 20)); then
    echo "  node $NODE_MAJOR is too old: the JS tests need Node >= 20"
    TOOLCHAIN_OK=0
  fi
fi
if ((TOOLCHAIN_OK)); then
  record_step "toolchain" 0 0
else
  record_step "toolchain" 1 0
  echo "error: required tools are missing (see above)" >&2
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# Brokers for the cluster tests: redis-server + redis-cli (Debian: redis-server, redis-tools) and
# nats-server, installed with apt-get only when missing (CI runs as root on Debian bookworm).
# Before the Rust tests: cluster/tests start real brokers too.
# Debian puts nats-server in /usr/sbin, which a non-login PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
BROKERS_MISSING=()
command -v redis-server >/dev/null 2>&1 || BROKERS_MISSING+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || BROKERS_MISSING+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || BROKERS_MISSING+=(nats-server)
# The TLS tests (tls.test.mjs, the loadtest's wss smoke test) make their CA with the openssl CLI.
command -v openssl >/dev/null 2>&1 || BROKERS_MISSING+=(openssl)
if ((${#BROKERS_MISSING[@]})); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    run_step "apt-get install ${BROKERS_MISSING[*]}" "$LOG_DIR/apt-brokers.log" \
      bash -c 'export DEBIAN_FRONTEND=noninteractive; timeout 600 apt-get update -qq &&
        exec timeout 900 apt-get install -y -qq --no-install-recommends "$@" </dev/null' _ "${BROKERS_MISSING[@]}" || true
  else
    echo "warning: ${BROKERS_MISSING[*]} missing and not root/apt: the cluster JS tests will fail" >&2
  fi
fi
printf '  %-14s %s\n' redis-server "$(redis-server --version 2>/dev/null | head -n1 || echo MISSING)"
printf '  %-14s %s\n' nats-server "$(nats-server --version 2>/dev/null | head -n1 || echo MISSING)"
printf '  %-14s %s\n' openssl "$(openssl version 2>/dev/null | head -n1 || echo MISSING)"

# ---------------------------------------------------------------------------------------------
if [[ "${RINGCAST_SKIP_RUST:-0}" != 1 ]]; then
  run_step "cargo fmt --check" "$LOG_DIR/fmt.log" \
    timeout 600 cargo fmt --all -- --check || true
  run_step "cargo clippy -D warnings" "$LOG_DIR/clippy.log" \
    timeout 2400 cargo clippy --workspace --all-targets -- -D warnings || true
fi

BUILD_OK=0
if run_step "cargo build --bin ringcast" "$LOG_DIR/build.log" timeout 2400 cargo build --bin ringcast; then
  BUILD_OK=1
fi

RUST_PASSED="" RUST_FAILED="" RUST_SKIPPED=""
if [[ "${RINGCAST_SKIP_RUST:-0}" != 1 ]]; then
  if ((HAVE_NEXTEST)); then
    if run_step "cargo nextest run --workspace" "$LOG_DIR/rust-tests.log" \
      timeout 2400 cargo nextest run --workspace --no-fail-fast --no-tests=warn; then :; fi
    # "Summary [  1.234s] 45 tests run: 45 passed, 2 skipped"  /  "... 40 passed, 5 failed, ..."
    summary_line="$(grep -E '^[[:space:]]*Summary \[' "$LOG_DIR/rust-tests.log" | tail -n1 || true)"
    if [[ -n "$summary_line" ]]; then
      RUST_PASSED="$(grep -oE '[0-9]+ passed' <<<"$summary_line" | grep -oE '[0-9]+' || echo 0)"
      RUST_FAILED="$(grep -oE '[0-9]+ failed' <<<"$summary_line" | grep -oE '[0-9]+' || echo 0)"
      RUST_SKIPPED="$(grep -oE '[0-9]+ skipped' <<<"$summary_line" | grep -oE '[0-9]+' || echo 0)"
    elif grep -q 'no tests to run' "$LOG_DIR/rust-tests.log"; then
      RUST_PASSED=0 RUST_FAILED=0 RUST_SKIPPED=0
    fi
  else
    if run_step "cargo test --workspace" "$LOG_DIR/rust-tests.log" \
      timeout 2400 cargo test --workspace --no-fail-fast; then :; fi
    # "test result: ok. 12 passed; 0 failed; 1 ignored; ..." once per test binary
    if grep -qE '^test result: ' "$LOG_DIR/rust-tests.log"; then
      read -r RUST_PASSED RUST_FAILED RUST_SKIPPED < <(grep -E '^test result: ' "$LOG_DIR/rust-tests.log" |
        sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' |
        awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}')
    fi
  fi
fi

# Every fuzz target for a few seconds (issue 12): an instrumented build of the parsers, then
# libFuzzer from the checked-in seeds; a crash or property failure fails this step.
if [[ "${RINGCAST_SKIP_RUST:-0}" != 1 && "${RINGCAST_SKIP_FUZZ:-0}" != 1 ]]; then
  run_step "fuzz targets, ${RINGCAST_FUZZ_SECS:-5}s each (fuzz/run.sh)" "$LOG_DIR/fuzz.log" \
    timeout 1800 bash fuzz/run.sh "${RINGCAST_FUZZ_SECS:-5}" || true
fi

# ---------------------------------------------------------------------------------------------
JS_DIR="$ROOT/tests/js"
LOCK_HASH="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
STAMP="$JS_DIR/node_modules/.ringcast-lock-sha256"
if [[ -d "$JS_DIR/node_modules" && -f "$STAMP" && "$(cat "$STAMP")" == "$LOCK_HASH" ]]; then
  log "npm deps up to date (tests/js/node_modules matches package-lock.json)"
  record_step "npm ci (tests/js)" skip 0
  NPM_OK=1
else
  NPM_OK=0
  if run_step "npm ci (tests/js)" "$LOG_DIR/npm.log" \
    timeout 900 npm ci --prefix "$JS_DIR" --no-audit --no-fund --ignore-scripts --loglevel=warn </dev/null; then
    echo "$LOCK_HASH" >"$STAMP"
    NPM_OK=1
  fi
fi

if [[ -n "${RINGCAST_JS_TESTS:-}" ]]; then
  read -r -a RUN_JS <<<"$RINGCAST_JS_TESTS"
else
  RUN_JS=("${JS_TESTS[@]}")
  if [[ "${RINGCAST_REST_TESTS:-0}" == 1 ]]; then
    RUN_JS+=("${JS_TESTS_NEED_REST[@]}")
  fi
fi
# Every *.test.mjs must be listed somewhere, so a new file is not silently never run.
for f in "$JS_DIR"/*.test.mjs; do
  b="$(basename "$f")"
  if [[ " ${JS_TESTS[*]} ${JS_TESTS_NEED_REST[*]} " != *" $b "* ]]; then
    echo "warning: tests/js/$b is in neither JS_TESTS nor JS_TESTS_NEED_REST in scripts/test.sh" >&2
  fi
done
for b in "${RUN_JS[@]}"; do
  [[ -f "$JS_DIR/$b" ]] || {
    echo "error: tests/js/$b does not exist" >&2
    exit 1
  }
done
# The dashboard test drives Debian's chromium (playwright-core, no browser download).
if [[ " ${RUN_JS[*]} " == *" dashboard.test.mjs "* ]] && [[ -z "${RINGCAST_CHROMIUM:-}" ]] &&
  ! [[ -x /usr/bin/chromium ]]; then
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  run_step "apt-get install chromium" "$LOG_DIR/apt-chromium.log" \
    bash -c "$SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" || true
fi
SKIPPED_JS=()
for b in "${JS_TESTS_NEED_REST[@]}"; do
  [[ " ${RUN_JS[*]} " == *" $b "* ]] || SKIPPED_JS+=("$b")
done

JS_PASSED="" JS_FAILED="" JS_SKIPPED=""
if ((BUILD_OK && NPM_OK)); then
  export RINGCAST_BIN="${RINGCAST_BIN:-$TARGET_DIR/debug/ringcast}"
  echo "JS test files: ${RUN_JS[*]}"
  ((${#SKIPPED_JS[@]})) && echo "not run (need the REST API; RINGCAST_REST_TESTS=1 to run): ${SKIPPED_JS[*]}"
  # shellcheck disable=SC2016 # $1/$@ are expanded by the inner bash
  if run_step "JS real-client tests (node --test)" "$LOG_DIR/js-tests.log" \
    bash -c 'cd "$1" && shift && exec timeout 1200 node --test --test-concurrency=1 \
      --test-timeout=120000 --test-force-exit --test-reporter=spec "$@" </dev/null' \
    _ "$JS_DIR" "${RUN_JS[@]}"; then :; fi
  # spec reporter closing lines: "ℹ pass 12", "ℹ fail 0", "ℹ skipped 0"
  if grep -qE '^[^ ]+ pass [0-9]+$' "$LOG_DIR/js-tests.log"; then
    JS_PASSED="$(grep -E '^[^ ]+ pass [0-9]+$' "$LOG_DIR/js-tests.log" | tail -n1 | grep -oE '[0-9]+$')"
    JS_FAILED="$(grep -E '^[^ ]+ fail [0-9]+$' "$LOG_DIR/js-tests.log" | tail -n1 | grep -oE '[0-9]+$' || echo 0)"
    JS_SKIPPED="$(grep -E '^[^ ]+ (skipped|todo) [0-9]+$' "$LOG_DIR/js-tests.log" | grep -oE '[0-9]+$' | awk '{s+=$1} END {print s+0}')"
  fi
else
  log "JS real-client tests: not run ($( ((BUILD_OK)) || printf 'ringcast did not build; ')$( ((NPM_OK)) || printf 'npm ci failed'))"
  record_step "JS real-client tests (node --test)" 1 0
fi

# ---------------------------------------------------------------------------------------------
# Python SDK tests (tests/python): a venv in the target dir, rebuilt when requirements change.
PY_DIR="$ROOT/tests/python"
PY_VENV="$TARGET_DIR/py-venv"
PY_REQ_HASH="$(sha256sum "$PY_DIR/requirements.txt" | cut -d' ' -f1)"
PY_STAMP="$PY_VENV/.ringcast-req-sha256"
PY_OK=0
if [[ -x "$PY_VENV/bin/python" && -f "$PY_STAMP" && "$(cat "$PY_STAMP")" == "$PY_REQ_HASH" ]]; then
  log "pip deps up to date (${PY_VENV#"$ROOT"/} matches tests/python/requirements.txt)"
  record_step "pip install (tests/python)" skip 0
  PY_OK=1
elif run_step "pip install (tests/python)" "$LOG_DIR/pip.log" \
  bash -c 'python3 -m venv --clear "$1" && exec timeout 900 "$1/bin/pip" install \
    --disable-pip-version-check --no-input -q -r "$2" </dev/null' _ "$PY_VENV" "$PY_DIR/requirements.txt"; then
  echo "$PY_REQ_HASH" >"$PY_STAMP"
  PY_OK=1
fi
PY_PASSED="" PY_FAILED="" PY_SKIPPED=""
if ((BUILD_OK && PY_OK)); then
  if run_step "Python SDK tests (pytest)" "$LOG_DIR/py-tests.log" \
    env RINGCAST_BIN="${RINGCAST_BIN:-$TARGET_DIR/debug/ringcast}" PYTHONDONTWRITEBYTECODE=1 \
    timeout 600 "$PY_VENV/bin/python" -m pytest -q -p no:cacheprovider "$PY_DIR" </dev/null; then :; fi
  # pytest's closing line: "10 passed in 0.66s" / "1 failed, 9 passed, 1 skipped in 3.1s"
  py_line="$(grep -E '[0-9]+ (passed|failed|errors?)( |,|$)' "$LOG_DIR/py-tests.log" | tail -n1 || true)"
  if [[ -n "$py_line" ]]; then
    PY_PASSED="$(grep -oE '[0-9]+ passed' <<<"$py_line" | awk '{s+=$1} END {print s+0}' || true)"
    PY_FAILED="$(grep -oE '[0-9]+ (failed|errors?)' <<<"$py_line" | awk '{s+=$1} END {print s+0}' || true)"
    PY_SKIPPED="$(grep -oE '[0-9]+ skipped' <<<"$py_line" | awk '{s+=$1} END {print s+0}' || true)"
  fi
else
  log "Python SDK tests: not run ($( ((BUILD_OK)) || printf 'ringcast did not build; ')$( ((PY_OK)) || printf 'pip install failed'))"
  record_step "Python SDK tests (pytest)" 1 0
fi

# ---------------------------------------------------------------------------------------------
echo
echo "================================ summary ================================"
for i in "${!STEP_NAMES[@]}"; do
  printf '  %-40s %-14s %5ss\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" "${STEP_SECS[$i]}"
done
[[ -n "$RUST_PASSED" ]] && echo "  Rust tests: ${RUST_PASSED} passed, ${RUST_FAILED} failed, ${RUST_SKIPPED} skipped"
[[ -n "$JS_PASSED" ]] && echo "  JS tests:   ${JS_PASSED} passed, ${JS_FAILED} failed, ${JS_SKIPPED} skipped"
[[ -n "$PY_PASSED" ]] && echo "  Python tests: ${PY_PASSED} passed, ${PY_FAILED} failed, ${PY_SKIPPED} skipped"
((${#SKIPPED_JS[@]})) && echo "  JS files not run (need the REST API): ${SKIPPED_JS[*]}"
echo "  logs: ${LOG_DIR#"$ROOT"/}/"
echo "========================================================================="
if [[ -n "$RUST_PASSED$JS_PASSED$PY_PASSED" ]]; then
  echo "tests: $((${RUST_PASSED:-0} + ${JS_PASSED:-0} + ${PY_PASSED:-0})) passed, $((${RUST_FAILED:-0} + ${JS_FAILED:-0} + ${PY_FAILED:-0})) failed, $((${RUST_SKIPPED:-0} + ${JS_SKIPPED:-0} + ${PY_SKIPPED:-0})) skipped"
fi
if ((FAILED)); then
  echo "RESULT: FAILED"
  exit 1
fi
echo "RESULT: OK"

#!/usr/bin/env bash
# The one check command, for people and CI: installs what is missing, then runs
#   1. ruff check . and ruff format --check ., then mypy (strict, on common/, the services,
#      every test and the benchmarks in stress-test/)
#   2. unit tests (test/unit, no I/O; one pytest process per core, at most 4: pytest-xdist)
#   3. on a fresh local stack of its own: test/integration, test/system,
#      test/run_consistency_test.py, test/faults
#   4. test/deploy/validate.sh (deployment files)
# and exits non-zero if any of them failed (it runs the rest anyway). Arguments go to every
# pytest run, e.g. ./run_tests.sh -k checkout -x (-n 0 runs the unit tests in one process, as
# --pdb needs)
#
# The test stack lives in TEST_STATE_DIR [<repo>/.run-test], is started empty and is always
# stopped and deleted at the end. It takes the ports of run_local.sh (GATEWAY_PORT etc., same
# defaults), so a stack started by ./run_local.sh must be down or use other ports. Tests get
# GATEWAY_URL, STATE_DIR, STACK_CTL (run_local.sh, for `ctl`/`pid`/`status` on the test stack),
# KAFKA_BOOTSTRAP_SERVERS and {ORDER,PAYMENT,STOCK}_REDIS_NODES in their environment.
set -euo pipefail
# shellcheck source=local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/lib.sh"
cd "$REPO_DIR"

PYTHON="$VENV_DIR/bin/python"
FAILED=()
PASSED=()
STACK_STARTED=0
STACK_UP=0

section() { printf '\n======== %s ========\n' "$*"; }

# step NAME COMMAND...: runs one check and records its outcome.
step() {
    local name=$1 status=0
    shift
    "$@" || status=$?
    if ((status == 0)); then
        PASSED+=("$name")
    else
        log "FAILED: $name (exit $status)"
        FAILED+=("$name")
    fi
}

has_tests() {
    [[ -d $1 ]] && [[ -n $(find "$1" -name 'test_*.py' -o -name '*_test.py' | head -n 1) ]]
}

# pytest DIR [ARGS...]; "no tests collected" (exit 5, e.g. everything deselected by -k) is no
# failure.
run_pytest() {
    local status=0
    "$PYTHON" -m pytest "$@" || status=$?
    ((status == 5)) && return 0
    return "$status"
}

pytest_dir() {
    local dir=$1
    shift
    section "pytest $dir"
    if has_tests "$dir"; then
        step "$dir" run_pytest "$dir" "$@"
    else
        echo "no tests in $dir"
    fi
}

# Starts an empty stack in TEST_STATE_DIR and exports its addresses; sets STACK_UP=1.
start_stack() {
    export STATE_DIR="$TEST_STATE_DIR"
    "$REPO_DIR/run_local.sh" down --clean >/dev/null || return
    STACK_STARTED=1
    "$REPO_DIR/run_local.sh" up || return
    set -a
    # shellcheck source=/dev/null
    source "$STATE_DIR/stack.env" || return
    set +a
    STACK_UP=1
}

# The last lines of the services' logs, to see why a test against the stack failed.
show_service_logs() {
    local file
    for file in "$TEST_STATE_DIR"/logs/{order,payment,stock}-*.log "$TEST_STATE_DIR/logs/gateway.log"
    do
        [[ -f $file ]] || continue
        echo "--- last lines of $(basename "$file")"
        tail -n 30 "$file"
    done
    # A 500 is an exception no handler mapped: its traceback, wherever it is in the logs.
    for file in "$TEST_STATE_DIR"/logs/{order,payment,stock}-*.log; do
        [[ -f $file ]] || continue
        grep -h '"Exception on request' "$file" | tail -n 3 | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    print("--- " + entry.get("worker", "?") + " " + entry["ts"] + ": " + entry["msg"])
    print(entry.get("exc", ""))
' || true
    done
}

stop_stack() {
    ((STACK_STARTED)) || return 0
    STACK_STARTED=0
    section "stopping the test stack"
    # Not to be interrupted half-way (the stop inherits the ignored signals).
    trap '' INT TERM
    STATE_DIR="$TEST_STATE_DIR" "$REPO_DIR/run_local.sh" down --clean || true
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

summary() {
    local status=$?
    stop_stack
    section "summary"
    if ((status == 130 || status == 143)); then echo "interrupted"; fi
    ((${#PASSED[@]} == 0)) || echo "passed: ${PASSED[*]}"
    if ((${#FAILED[@]} > 0)); then
        echo "FAILED: ${FAILED[*]}"
        exit 1
    fi
    exit "$status"
}

main() {
    TEST_STATE_DIR=${TEST_STATE_DIR:-$REPO_DIR/.run-test}
    trap summary EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    section "setup"
    # The benchmarks' own packages too (locust, matplotlib): mypy checks stress-test/ with them.
    setup_machine requirements.txt requirements-dev.txt stress-test/requirements.txt

    section "ruff check and format"
    step ruff "$VENV_DIR/bin/ruff" check .
    step "ruff format" "$VENV_DIR/bin/ruff" format --check .

    section "mypy (strict: common, order, stock, payment, test, stress-test; see pyproject.toml)"
    step mypy "$PYTHON" -m mypy

    # The unit tests have the machine to themselves: one pytest process per core (at most 4),
    # each taking the next test when done (the simulation's eight chunks of seeds are most of it).
    local cores
    cores=$(nproc)
    pytest_dir test/unit -n "$((cores < 4 ? cores : 4))" --dist worksteal "$@"

    section "starting a fresh local stack in $TEST_STATE_DIR"
    step "stack up" start_stack
    if ((STACK_UP)); then
        local stack_failures=${#FAILED[@]}
        pytest_dir test/integration "$@"
        pytest_dir test/system "$@"
        if [[ -f test/run_consistency_test.py ]]; then
            section "consistency test"
            # Ten runs in a row against this stack's gateway, whatever its port.
            printf '{"ORDER_URL": "%s", "PAYMENT_URL": "%s", "STOCK_URL": "%s"}\n' \
                "$GATEWAY_URL" "$GATEWAY_URL" "$GATEWAY_URL" >"$TEST_STATE_DIR/urls.json"
            step "consistency test" "$PYTHON" test/run_consistency_test.py --runs 10 \
                --urls "$TEST_STATE_DIR/urls.json"
        fi
        pytest_dir test/faults "$@"
        if ((${#FAILED[@]} > stack_failures)); then
            section "service logs"
            show_service_logs
        fi
    fi
    stop_stack

    if [[ -f test/deploy/validate.sh ]]; then
        section "deployment validation"
        step "deploy validation" bash test/deploy/validate.sh
    fi
}

main "$@"

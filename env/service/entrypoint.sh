#!/bin/sh
# Entry point of the service image: SERVICE_NAME (order | stock | payment) selects the app.
# Any arguments are passed on to hypercorn (e.g. `--log-level debug`).
set -eu

case "${SERVICE_NAME:-}" in
    order | stock | payment) ;;
    *)
        echo "service-entrypoint: SERVICE_NAME must be order, stock or payment (got '${SERVICE_NAME:-}')" >&2
        exit 64
        ;;
esac

# Exit unless $2, the value of $1, is a plain decimal number; $3 says what it must be.
require_number() {
    case "$2" in
        "" | *[!0-9]*)
            echo "service-entrypoint: $1 must be $3 (got '$2')" >&2
            exit 64
            ;;
    esac
}

# Every replica needs its own WORKER_ID. Kubernetes sets it from the pod name; compose replicas
# share one environment, so fall back to the container's hostname (its id), unique per replica.
WORKER_ID="${WORKER_ID:-$(hostname)}"
export WORKER_ID

# How long a stopping worker (SIGTERM: compose stop, pod deletion, scale-in) lets the requests
# it holds finish; hypercorn's default, 3 s, cut checkouts short. A checkout is held at most
# its answer budget (common/saga/verdict.py): CHECKOUT_ANSWER_MS, or CHECKOUT_TIMEOUT_MS if
# that is longer, covering its turn, its saga and the compensation of a saga it turned back.
# So the budget + 5 s. compose's stop_grace_period and the pods' terminationGracePeriodSeconds
# leave room for it (test/deploy checks them).
checkout_ms="${CHECKOUT_TIMEOUT_MS:-20000}"
require_number CHECKOUT_TIMEOUT_MS "$checkout_ms" "a number of milliseconds"
answer_ms="${CHECKOUT_ANSWER_MS:-55000}"
require_number CHECKOUT_ANSWER_MS "$answer_ms" "a number of milliseconds"
if [ "$checkout_ms" -gt "$answer_ms" ]; then answer_ms=$checkout_ms; fi
graceful_s=$(((answer_ms + 999) / 1000 + 5))

# The port hypercorn listens on, on every interface. Compose and k8s leave PORT unset: their
# healthchecks, probes, Services and the gateway's upstreams all use 8000. A check that runs
# this entrypoint beside a local stack (test/system/test_deployment_settings.py) moves it.
port="${PORT:-8000}"
require_number PORT "$port" "a port number"

# --workers 0: hypercorn serves in this very process (PID 1 of the container), as in the local
# stack. With --workers 1 a parent process kept the listening socket open while its child
# drained: after SIGTERM new connections were still accepted, then hung until the worker exited,
# instead of being refused at once and retried elsewhere by the gateway.
exec hypercorn \
    --worker-class uvloop \
    --workers 0 \
    --bind "0.0.0.0:$port" \
    --keep-alive 75 \
    --graceful-timeout "$graceful_s" \
    "$@" \
    "${SERVICE_NAME}.app:create_app()"

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

# Every replica needs its own WORKER_ID. Kubernetes sets it from the pod name; compose replicas
# share one environment, so fall back to the container's hostname (its id), unique per replica.
WORKER_ID="${WORKER_ID:-$(hostname)}"
export WORKER_ID

exec hypercorn \
    --worker-class uvloop \
    --workers 1 \
    --bind 0.0.0.0:8000 \
    --keep-alive 75 \
    "$@" \
    "${SERVICE_NAME}.app:app"

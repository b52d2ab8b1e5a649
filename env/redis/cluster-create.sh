#!/bin/sh
# Forms one Redis Cluster out of fresh nodes (3 masters + 3 replicas with 6 nodes), once.
# Used by the one-shot `<service>-redis-init` services of docker-compose.yml (redis:7 image).
#   REDIS_CLUSTER_NODES  space-separated host:port of every node (required)
#   REDIS_CLUSTER_REPLICAS  replicas per master (default 1)
#   REDIS_PASSWORD  optional
# Idempotent: if the first node already knows every node (a restart with kept volumes), it
# only waits for cluster_state:ok. Exits non-zero if the cluster is not ok in time.
set -eu

nodes="${REDIS_CLUSTER_NODES:?REDIS_CLUSTER_NODES is required}"
replicas="${REDIS_CLUSTER_REPLICAS:-1}"
if [ -n "${REDIS_PASSWORD:-}" ]; then
    export REDISCLI_AUTH="$REDIS_PASSWORD"
fi

cli() {
    hostport="$1"
    shift
    redis-cli -h "${hostport%:*}" -p "${hostport##*:}" "$@"
}

info_field() {
    cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

wait_for() {
    what="$1"
    shift
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "cluster-create: gave up waiting for $what" >&2
            return 1
        fi
        sleep 1
    done
}

cluster_ok() {
    [ "$(info_field "$first" cluster_state)" = "ok" ]
}

count=0
first=""
for node in $nodes; do
    count=$((count + 1))
    [ -n "$first" ] || first="$node"
    wait_for "$node to answer PING" sh -c "redis-cli -h '${node%:*}' -p '${node##*:}' ping | grep -q PONG"
done

known="$(info_field "$first" cluster_known_nodes)"
if [ "${known:-1}" -ge "$count" ]; then
    echo "cluster-create: $first already knows $known nodes; not creating again"
else
    # CLUSTER MEET takes addresses, not names: resolve every node first.
    addresses=""
    for node in $nodes; do
        ip="$(getent hosts "${node%:*}" | awk '{ print $1; exit }')"
        if [ -z "$ip" ]; then
            echo "cluster-create: cannot resolve ${node%:*}" >&2
            exit 1
        fi
        addresses="$addresses $ip:${node##*:}"
    done
    echo "cluster-create: creating a cluster of$addresses"
    # shellcheck disable=SC2086 # one argument per address
    redis-cli --cluster create $addresses --cluster-replicas "$replicas" --cluster-yes
fi

wait_for "cluster_state:ok" cluster_ok
echo "cluster-create: cluster_state:ok ($count nodes)"

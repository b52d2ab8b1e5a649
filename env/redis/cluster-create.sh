#!/bin/sh
# Forms one Redis Cluster out of fresh nodes (3 masters + 3 replicas with 6 nodes), once.
# Used by the one-shot `<service>-redis-init` services of docker-compose.yml (redis:7 image).
#   REDIS_CLUSTER_NODES  space-separated host:port of every node (required)
#   REDIS_CLUSTER_REPLICAS  replicas per master (default 1)
#   REDIS_PASSWORD  optional
# Idempotent: if the first node already knows every node (a restart with kept volumes), it
# introduces the nodes to each other again at their current addresses instead: the nodes find
# their peers by the IPs kept in nodes.conf, and `docker compose down` + `up` gives the new
# containers new IPs. Then it waits until every node reports cluster_state:ok, and exits
# non-zero if that does not happen in time.
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

# Every node reports cluster_state:ok and is linked to all nodes, none of them flagged failing
# (a node restarted with its peers at addresses they no longer have says ok until it notices,
# cluster-node-timeout later).
cluster_ok() {
    for node in $nodes; do
        [ "$(info_field "$node" cluster_state)" = "ok" ] || return 1
        cli "$node" cluster nodes | tr -d '\r' |
            awk -v want="$count" '$8 == "connected" && $3 !~ /fail/ { n++ } END { exit n < want }' ||
            return 1
    done
}

# CLUSTER MEET takes addresses, not names.
address_of() {
    ip="$(getent hosts "${1%:*}" | awk '{ print $1; exit }')"
    if [ -z "$ip" ]; then
        echo "cluster-create: cannot resolve ${1%:*}" >&2
        exit 1
    fi
    echo "$ip:${1##*:}"
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
    echo "cluster-create: $first already knows $known nodes; introducing them again at their current addresses"
    # A node told to MEET an address that answers with a node id it knows updates that node's
    # address (and the met node learns the sender's); no node joins and no slot moves. With
    # unchanged addresses this changes nothing. A node without the cluster's configuration (its
    # volume lost) is left out: meeting it would add an empty master.
    members=""
    for node in $nodes; do
        knows="$(info_field "$node" cluster_known_nodes)"
        if [ "${knows:-0}" -ge "$count" ]; then
            members="$members $node"
        else
            echo "cluster-create: $node does not know the cluster (a new volume?); not joining it" >&2
        fi
    done
    for node in $members; do
        for peer in $members; do
            [ "$peer" = "$node" ] && continue
            address="$(address_of "$peer")"
            cli "$node" cluster meet "${address%:*}" "${address##*:}" >/dev/null
        done
    done
else
    addresses=""
    for node in $nodes; do
        addresses="$addresses $(address_of "$node")"
    done
    echo "cluster-create: creating a cluster of$addresses"
    # shellcheck disable=SC2086 # one argument per address
    redis-cli --cluster create $addresses --cluster-replicas "$replicas" --cluster-yes
fi

wait_for "cluster_state:ok on every node" cluster_ok
echo "cluster-create: cluster_state:ok on all $count nodes"

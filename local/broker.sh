#!/usr/bin/env bash
# The local Apache Kafka broker (one KRaft node, broker and controller).
#
#   local/broker.sh run KAFKA_LIBS SERVER_PROPERTIES LOG_DIR CLUSTER_ID
#       run by supervisord as the program `broker`: formats the log directory first when it holds
#       no log (the first start, or a log deleted to bring the broker back empty), then becomes
#       the broker.
#   local/broker.sh archive KAFKA_LIBS PYTHON
#       at install: runs a throw-away broker through a crash, a restart and the services' kinds
#       of requests (PYTHON runs local/kafka_warmup.py, with aiokafka), and keeps the classes it
#       loaded in a class data sharing archive beside KAFKA_LIBS, which every later start maps
#       instead of loading them again (a start takes 1.5 s instead of 2.9 s, and a restarted
#       broker does not load the classes of recovery, produce, fetch and groups as it serves).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mode=$1 libs=$2
archive="${libs%/libs}/classes.jsa"

# shared KEY: KEY's value in env/kafka/broker.env, the settings every deployment's broker takes.
shared() { sed -n "s/^$1=//p" "$here/../env/kafka/broker.env"; }

# The JVM's heap and compiler come from env/kafka/broker.env, as in the apache/kafka images (it
# says why: a small fixed heap, the serial collector, C1 only).
read -ra java_options <<<"$(shared KAFKA_HEAP_OPTS) $(shared KAFKA_JVM_PERFORMANCE_OPTS)"
java_options+=("-Dlog4j2.configurationFile=$here/kafka/log4j2.properties")

format() { # PROPERTIES LOG_DIR CLUSTER_ID
    mkdir -p "$2"
    java "${java_options[@]}" -cp "$libs/*" kafka.tools.StorageTool format --ignore-formatted \
        -t "$3" -c "$1"
}

free_port() {
    local port
    for port in $(shuf -i 20000-29999 -n 50); do
        if ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            ! (: <"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    return 1
}

# start_broker PROPERTIES LOG JAVA_OPTION...: starts a broker in the background, sets `pid`, and
# returns once it has started (fails if it died or took a minute).
start_broker() {
    local properties=$1 out=$2 tries
    shift 2
    java "${java_options[@]}" "$@" -cp "$libs/*" kafka.Kafka "$properties" >"$out" 2>&1 &
    pid=$!
    for ((tries = 0; tries < 600; tries++)); do
        grep -q "Kafka Server started" "$out" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

make_archive() {
    local dir port pid python=$1
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' RETURN
    port=$(free_port)
    cat >"$dir/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((port + 1))
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
controller.listener.names=CONTROLLER
log.dirs=$dir/log
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=$(shared KAFKA_BROKER_SESSION_TIMEOUT_MS)
broker.heartbeat.interval.ms=$(shared KAFKA_BROKER_HEARTBEAT_INTERVAL_MS)
PROPERTIES
    format "$dir/server.properties" "$dir/log" "$(shared CLUSTER_ID)" >/dev/null
    # First a broker that is killed after some traffic, so that the one whose classes are kept
    # recovers an uncleanly closed log as it starts, as a broker restarted after a crash does;
    # then that one serves the same traffic (local/kafka_warmup.py) and stops.
    if start_broker "$dir/server.properties" "$dir/first.log"; then
        "$python" "$here/kafka_warmup.py" "127.0.0.1:$port" >"$dir/warmup-first.log" 2>&1 || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
    { wait "$pid"; } 2>/dev/null || true # (bash reports the kill)
    if start_broker "$dir/server.properties" "$dir/second.log" "-XX:ArchiveClassesAtExit=$archive.tmp"
    then
        "$python" "$here/kafka_warmup.py" "127.0.0.1:$port" >"$dir/warmup.log" 2>&1 ||
            echo "broker.sh: the warm-up failed; the archive has the start's classes only" >&2
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    if [[ -s $archive.tmp ]]; then mv "$archive.tmp" "$archive"; else rm -f "$archive.tmp" && return 1; fi
}

case $mode in
    run)
        properties=$3 log_dir=$4 cluster_id=$5
        if [[ -f $archive ]]; then java_options+=("-XX:SharedArchiveFile=$archive"); fi
        # A JVM crash report goes beside the log, not into whatever directory it started in.
        java_options+=("-XX:ErrorFile=$(dirname "$log_dir")/hs_err_pid%p.log")
        if [[ ! -f $log_dir/meta.properties ]]; then format "$properties" "$log_dir" "$cluster_id"; fi
        exec java "${java_options[@]}" -cp "$libs/*" kafka.Kafka "$properties"
        ;;
    archive) make_archive "$3" ;;
    *)
        echo "usage: $0 run KAFKA_LIBS SERVER_PROPERTIES LOG_DIR CLUSTER_ID | archive KAFKA_LIBS PYTHON" >&2
        exit 2
        ;;
esac

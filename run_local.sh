#!/usr/bin/env bash
# The whole checkout system on this machine, under supervisord: an nginx gateway, N hypercorn
# workers per service, three Redis Clusters of six nodes and an Apache Kafka broker (one KRaft
# node, its log on disk in STATE_DIR). Installs what is missing (Debian packages, .venv, Kafka's
# jars from Maven Central) on the way up.
#
# Usage: ./run_local.sh [up]            start everything; returns once all of it is healthy
#        ./run_local.sh down [--clean]  stop everything; --clean also deletes STATE_DIR
#        ./run_local.sh reset           same as down --clean
#        ./run_local.sh status          one line per process: name state pid ("-" if none)
#        ./run_local.sh pid NAME        pid of one process (fails unless it runs)
#        ./run_local.sh ctl ARGS...     supervisorctl ARGS... on this stack
#        ./run_local.sh env             the stack's addresses, as KEY=value lines
#        ./run_local.sh scale SERVICE N [SERVICE N ...]
#                                       run N workers of SERVICE (order, payment, stock; 1-16)
#                                       on the running stack, while it serves: new workers join
#                                       their consumer groups and then the gateway; removed
#                                       ones leave the gateway, then stop gracefully
#
# Settings (environment variables, default in brackets):
#   STATE_DIR            [<repo>/.run] generated configs, Redis data (AOF, nodes.conf), the
#                        broker's log (broker/), logs/
#   GATEWAY_PORT         [8000] the nginx gateway, on 127.0.0.1
#   REPLICAS             [1] active workers per service; per service:
#   ORDER_REPLICAS, PAYMENT_REPLICAS, STOCK_REPLICAS  [REPLICAS]
#   STANDBY              [1] one more worker per service, an HTTP standby (SERVICE-standby, on
#                        port base+99): the gateway's backup, sent requests only while no active
#                        worker answers (one is restarting); it joins no consumer group. 0: none.
#                        README.md, "One worker per service", says why one active worker.
#   ORDER_PORT_BASE, PAYMENT_PORT_BASE, STOCK_PORT_BASE  [8100, 8200, 8300]
#                        worker k of a service listens on base+k
#   ORDER_REDIS_PORT_BASE, PAYMENT_REDIS_PORT_BASE, STOCK_REDIS_PORT_BASE  [7000, 7100, 7200]
#                        the six nodes of a service's Redis Cluster listen on base..base+5
#   BROKER_PORT          [9092] the Kafka broker (its controller listens on BROKER_PORT+1)
#   REDIS_CLUSTER_NODE_TIMEOUT_MS  [3000] a dead master's replica is promoted after about this
#   UP_TIMEOUT_S         [120] how long `up` waits for everything to be healthy
#   STOCK_URL            [http://127.0.0.1:$GATEWAY_PORT/stock] where order reads item prices
#   CHECKOUT_TIMEOUT_MS, CHECKOUT_ANSWER_MS, CHECKOUT_STEPS, SAGA_STEP_TIMEOUT_MS, SAGA_DEADLINE_MS,
#   LOG_LEVEL, LOG_FORMAT, LOG_MESSAGES, OTEL_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT
#                        passed to the services when set
# Settings are read by `up`; a second `up` with other settings applies them to the running stack
# (Redis settings only take effect after a `down`), except the ports (GATEWAY_PORT, BROKER_PORT,
# the *_PORT_BASE): it refuses to move those, changing nothing; `down` first. A worker count set by `scale` lasts as long
# as the stack: a second `up` keeps it unless the environment gives that count, and `down`
# forgets it (set ORDER_REPLICAS etc. to start with other counts).
set -euo pipefail
# shellcheck source=local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/lib.sh"

# ---------------------------------------------------------------------------------------------
# supervisord

set_paths() {
    SV_CONF="$STATE_DIR/supervisord.conf"
    SV_PIDFILE="$STATE_DIR/supervisord.pid"
    SV_SIDFILE="$STATE_DIR/supervisord.session"
    NGINX_DIR="$STATE_DIR/nginx"
    LOG_DIR="$STATE_DIR/logs"
    SOCKET="$STATE_DIR/supervisor.sock"
    # The running stack's settings and current worker counts (write_running_env).
    RUNNING_ENV="$STATE_DIR/running.env"
    # The gateway's holder (common/holder.py) listens here.
    HOLDER_SOCKET="$STATE_DIR/holder.sock"
    # A unix socket path must fit in 108 bytes.
    if ((${#SOCKET} > 100)); then
        SOCKET="/tmp/checkout-supervisor-$(printf %s "$STATE_DIR" | sha256sum | cut -c1-16).sock"
        HOLDER_SOCKET="/tmp/checkout-holder-$(printf %s "$STATE_DIR" | sha256sum | cut -c1-16).sock"
    fi
}

ctl() { "$VENV_DIR/bin/supervisorctl" -c "$SV_CONF" "$@"; }

# Prints supervisord's pid if it is running.
supervisord_pid() {
    local pid
    [[ -f $SV_PIDFILE ]] || return 1
    pid=$(<"$SV_PIDFILE")
    is_uint "$pid" && alive "$pid" && grep -q supervisord "/proc/$pid/cmdline" 2>/dev/null ||
        return 1
    echo "$pid"
}

boot_id() { cat /proc/sys/kernel/random/boot_id; }

# Executables the stack runs; a leftover process is only killed if it runs one of these.
stack_executables() {
    local path
    for path in "$(command -v redis-server)" "$(command -v nginx)" "$VENV_DIR/bin/python" \
        "$BASH" "$(command -v java)"; do
        [[ -n $path ]] && readlink -f "$path"
    done
}

# Stops what is left of a supervisord that is gone (SIGKILLed): processes of its session
# (supervisord is a session leader and its programs never leave its session) running one of the
# stack's binaries. They still serve, so they stop as `down` stops a stack (stop_in_order).
# (Stopping them all at once dropped the requests in flight, as `down` once did.)
sweep_dead_session() {
    local sid boot pid exe victims=() gateway=() web=() state=() executables nginx python
    [[ -f $SV_SIDFILE ]] || return 0
    read -r sid boot <"$SV_SIDFILE"
    if [[ $boot == "$(boot_id)" ]] && ! alive "$sid"; then
        executables=$(stack_executables)
        nginx=$(readlink -f "$(command -v nginx)")
        python=$(readlink -f "$VENV_DIR/bin/python")
        for pid in $(procs_in session "$sid"); do
            exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || continue
            grep -qxF "$exe" <<<"$executables" || continue
            victims+=("$pid")
            case $exe in
                "$nginx") gateway+=("$pid") ;;
                "$python") web+=("$pid") ;;
                *) state+=("$pid") ;;
            esac
        done
        if ((${#victims[@]} > 0)); then
            log "stopping ${#victims[@]} leftover processes of a stopped stack: ${victims[*]}"
            stop_in_order "${gateway[*]}" "${web[*]}" "${state[*]}"
            kill_and_wait "${victims[@]}"
        fi
    fi
    rm -f "$SV_SIDFILE"
}

# ---------------------------------------------------------------------------------------------
# Configuration

# fill TEMPLATE KEY=VALUE...: prints TEMPLATE with each ${KEY} replaced by VALUE.
fill() {
    local template=$1 text pair
    shift
    text=$(<"$template")
    for pair in "$@"; do
        text=${text//"\${${pair%%=*}}"/"${pair#*=}"}
    done
    if [[ $text =~ \$\{[A-Z][A-Z0-9_]*\} ]]; then
        die "$template: no value for ${BASH_REMATCH[0]}"
    fi
    printf '%s\n' "$text"
}

# write_if_changed DEST TEXT: writes only a change (then sets RENDER_CHANGED=1), so that
# `supervisorctl update` and nginx reloads only act on real changes.
write_if_changed() {
    if [[ ! -f $1 || $(<"$1") != "$2" ]]; then
        printf '%s\n' "$2" >"$1"
        RENDER_CHANGED=1
    fi
}

# render TEMPLATE DEST KEY=VALUE...
render() {
    local template=$1 dest=$2 text
    shift 2
    text=$(fill "$template" "$@")
    write_if_changed "$dest" "$text"
}

# The broker's settings for every deployment (env/kafka/broker.env, KAFKA_* variables as the
# apache/kafka image takes them) as server.properties lines, converted as that image does:
# KAFKA_ off, lower case, "___" -> "-", "__" -> "_", "_" -> "."; the JVM's options are no
# properties (local/broker.sh hands them to java).
shared_broker_properties() {
    local line key value
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^KAFKA_([A-Z0-9_]+)=(.*)$ ]] || continue
        [[ ${BASH_REMATCH[1]} == HEAP_OPTS || ${BASH_REMATCH[1]} == JVM_PERFORMANCE_OPTS ]] && continue
        key=${BASH_REMATCH[1],,} value=${BASH_REMATCH[2]}
        key=${key//___/-}
        key=${key//__/@}
        key=${key//_/.}
        printf '%s=%s\n' "${key//@/_}" "$value"
    done <"$REPO_DIR/env/kafka/broker.env"
}

broker_cluster_id() { sed -n 's/^CLUSTER_ID=//p' "$REPO_DIR/env/kafka/broker.env"; }

generate_broker() {
    local dir="$STATE_DIR/broker"
    mkdir -p "$dir"
    render "$LOCAL_DIR/server.properties.in" "$dir/server.properties" \
        BROKER_PORT="$BROKER_PORT" CONTROLLER_PORT="$((BROKER_PORT + 1))" LOG_DIR="$dir/log" \
        SHARED="$(shared_broker_properties)"
    program broker 200 true TERM 10 "$LOCAL_DIR/broker.sh run $KAFKA_LIBS $dir/server.properties $dir/log \
$(broker_cluster_id)"
}

# supervisord expands %(...)s in values: escape %; and quote each value.
sv_environment() {
    local pair out=()
    for pair in "$@"; do
        local value=${pair#*=}
        value=${value//%/%%}
        out+=("${pair%%=*}=\"${value//\"/\\\"}\"")
    done
    local IFS=,
    echo "${out[*]}"
}

# program NAME PRIORITY AUTOSTART STOP_SIGNAL STOP_WAIT_S COMMAND [KEY=VALUE...]; STOP_SIGNAL:
# what supervisord sends to stop it (TERM, or QUIT for the gateway); STOP_WAIT_S: how long it
# then waits before it sends SIGKILL.
program() {
    local name=$1 priority=$2 autostart=$3 stop_signal=$4 stop_wait=$5 command=$6
    shift 6
    render "$LOCAL_DIR/program.conf.in" "$STATE_DIR/programs/$name.conf" \
        NAME="$name" PRIORITY="$priority" AUTOSTART="$autostart" STOP_SIGNAL="$stop_signal" \
        STOP_WAIT_S="$stop_wait" \
        COMMAND="${command//%/%%}" \
        ENVIRONMENT="$(sv_environment PYTHONUNBUFFERED=1 "$@")" \
        REPO_DIR="$REPO_DIR" STATE_DIR="$STATE_DIR"
    WANTED_PROGRAMS+=("$name.conf")
}

generate_redis() {
    local service port base k dir
    for service in "${SERVICES[@]}"; do
        base=$(redis_port_base "$service")
        for ((k = 0; k < REDIS_NODES_PER_CLUSTER; k++)); do
            port=$((base + k))
            dir="$STATE_DIR/redis/$service-$k"
            mkdir -p "$dir"
            render "$LOCAL_DIR/redis.conf.in" "$dir/redis.conf" PORT="$port" DATA_DIR="$dir" \
                NODE_TIMEOUT_MS="$REDIS_CLUSTER_NODE_TIMEOUT_MS"
            program "redis-$service-$k" 100 true TERM 10 "$(command -v redis-server) $dir/redis.conf"
        done
    done
}

generate_services() {
    local service
    for service in "${SERVICES[@]}"; do generate_service "$service"; done
}

# The programs of one service's workers 0..N-1 and of its standby (STANDBY). A worker told to
# stop (SIGTERM: `scale`, `down`, as a pod is told) stops taking connections, answers the
# requests it holds within hypercorn's graceful timeout, which outlasts the longest checkout
# wait, and only then stops its consumers (they commit and leave their groups) and its clients;
# supervisord waits for all of that.
generate_service() {
    local service=$1 k port
    for ((k = 0; k < $(service_replicas "$service"); k++)); do
        worker_program "$service" "$service-$k" $(($(service_port_base "$service") + k))
    done
    port=$(standby_port "$service")
    if [[ -n $port ]]; then worker_program "$service" "$service-standby" "$port" STANDBY=1; fi
}

# worker_program SERVICE NAME PORT [KEY=VALUE...]: one worker's program, with its own settings.
worker_program() {
    local service=$1 name=$2 port=$3 var pass=() graceful
    shift 3
    for var in "${PASS_THROUGH_VARS[@]}"; do
        if [[ -n ${!var:-} ]]; then pass+=("$var=${!var}"); fi
    done
    graceful=$(($(checkout_wait_max_s) + 5))
    # --workers 0 serves in this very process: with --workers 1 hypercorn forks a child that a
    # SIGKILL of the parent would leave behind, holding the port.
    program "$name" 300 false TERM $((graceful + 15)) \
        "$VENV_DIR/bin/hypercorn --worker-class uvloop --workers 0 --backlog 1024 \
--bind 127.0.0.1:$port --keep-alive 75 --graceful-timeout $graceful $service.app:create_app()" \
        PYTHONPATH="$REPO_DIR" SERVICE_NAME="$service" WORKER_ID="$name" \
        REDIS_NODES="$(redis_nodes "$service")" \
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" \
        STOCK_URL="${STOCK_URL:-http://127.0.0.1:$GATEWAY_PORT/stock}" "${pass[@]}" "$@"
}

generate_gateway() {
    local service k servers upstreams=() text standby routes=()
    mkdir -p "$NGINX_DIR/tmp"
    for service in "${SERVICES[@]}"; do
        servers=()
        for ((k = 0; k < $(service_replicas "$service"); k++)); do
            servers+=("    server 127.0.0.1:$(($(service_port_base "$service") + k)) max_fails=0;")
        done
        standby=$(standby_port "$service")
        if [[ -n $standby ]]; then
            # max_fails=0 as well: the backup gets requests only while no active worker listens,
            # so no traffic would ever clear a failure counted against it, and at the next kill
            # nginx would let one probe through and answer the other requests 502.
            servers+=("    server 127.0.0.1:$standby max_fails=0 backup;")
        fi
        upstreams+=("$(fill "$LOCAL_DIR/upstream.conf.in" UPSTREAM="${service}_upstream" \
            SERVERS="$(printf '%s\n' "${servers[@]}")")")
        routes+=(--route "/$(gateway_prefix "$service")/=$(worker_addresses "$service")\
${standby:+,127.0.0.1:$standby}")
    done
    upstreams+=("upstream holder_upstream {
    server unix:$HOLDER_SOCKET max_fails=0;
}")
    RENDER_CHANGED=0
    text=$(printf '%s\n' "${upstreams[@]}")
    write_if_changed "$NGINX_DIR/upstreams.conf" "$text"
    render "$LOCAL_DIR/nginx.conf.in" "$NGINX_DIR/nginx.conf" NGINX_DIR="$NGINX_DIR" \
        GATEWAY_PORT="$GATEWAY_PORT" REPO_DIR="$REPO_DIR" NGINX_USER="$(id -un) $(id -gn)"
    GATEWAY_CHANGED=$RENDER_CHANGED
    # SIGQUIT, nginx's graceful shutdown: it stops listening, answers the requests it holds
    # (each within proxy_read_timeout) and closes its idle connections. (SIGTERM, its fast
    # shutdown, dropped the checkouts in flight: a success to the course's clients, paid or not.)
    # The gateway's holder: where nginx sends a request every worker of its service failed,
    # to be tried again as soon as one listens (common/holder.py, env/gateway/routes.conf).
    # SIGTERM: it stops taking requests and answers those it holds (each within the hold and
    # the time a worker takes to answer, as nginx allows the holder in routes.conf).
    program holder 350 true TERM $((HOLD_S + GATEWAY_READ_TIMEOUT_S + 5)) \
        "$VENV_DIR/bin/python -m common.holder --listen unix:$HOLDER_SOCKET --hold-s $HOLD_S \
--answer-s $GATEWAY_READ_TIMEOUT_S ${routes[*]}" PYTHONPATH="$REPO_DIR"
    program gateway 400 true QUIT "$(gateway_stop_wait_s)" \
        "$(command -v nginx) -p $NGINX_DIR/ -c $NGINX_DIR/nginx.conf -e stderr"
}

# How long a graceful stop of the gateway (and, in `down`, of the workers) may take: the longest
# request either holds is a checkout.
gateway_stop_wait_s() { echo $(($(checkout_wait_max_s) + 10)); }

generate_configs() {
    local conf max_fds
    mkdir -p "$STATE_DIR/programs" "$LOG_DIR"
    WANTED_PROGRAMS=()
    max_fds=$(ulimit -Hn)
    if [[ $max_fds == unlimited ]] || ((max_fds > 65536)); then max_fds=65536; fi
    render "$LOCAL_DIR/supervisord.conf.in" "$SV_CONF" SOCKET="$SOCKET" STATE_DIR="$STATE_DIR" \
        REPO_DIR="$REPO_DIR" MIN_FDS="$max_fds"
    generate_redis
    generate_broker
    generate_services
    generate_gateway
    # Programs of a larger REPLICAS than now wanted.
    for conf in "$STATE_DIR"/programs/*.conf; do
        if ! printf '%s\n' "${WANTED_PROGRAMS[@]}" | grep -qxF "$(basename "$conf")"; then
            rm -f "$conf"
        fi
    done
    write_stack_env
    write_running_env
}

# The settings the stack runs with, and its current worker counts: `scale` renders new workers
# exactly like the others from them (whatever its own environment), and `up` keeps the counts
# its environment does not give. `down` deletes the file, so a count set by `scale` does not
# outlive the stack.
write_running_env() {
    local name
    {
        echo "# The running stack's settings (run_local.sh: write_running_env); deleted by down."
        for name in "${SETTING_NAMES[@]}" STOCK_URL "${PASS_THROUGH_VARS[@]}"; do
            if [[ -n ${!name:-} ]]; then printf '%s=%q\n' "$name" "${!name}"; fi
        done
    } >"$RUNNING_ENV"
}

# The settings of the running stack, in place of this command's environment.
load_running_settings() {
    local name
    for name in STOCK_URL "${PASS_THROUGH_VARS[@]}"; do unset "$name"; done
    # shellcheck source=/dev/null
    source "$RUNNING_ENV"
}

# The current worker count of a service on the running stack.
running_replicas() { sed -n "s/^${1^^}_REPLICAS=//p" "$RUNNING_ENV"; }

write_stack_env() {
    local service
    {
        echo "GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT"
        echo "STATE_DIR=$STATE_DIR"
        echo "STACK_CTL=$REPO_DIR/run_local.sh"
        echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$BROKER_PORT"
        for service in "${SERVICES[@]}"; do
            echo "${service^^}_REDIS_NODES=$(redis_nodes "$service")"
            echo "${service^^}_WORKERS=$(worker_addresses "$service")"
            echo "${service^^}_STANDBY=$(standby_address "$service")"
        done
    } >"$STATE_DIR/stack.env"
}

# The host:port of every worker of a service, comma-separated (each serves /metrics).
worker_addresses() {
    local k out=()
    for ((k = 0; k < $(service_replicas "$1"); k++)); do
        out+=("127.0.0.1:$(($(service_port_base "$1") + k))")
    done
    local IFS=,
    echo "${out[*]}"
}

# The standby's host:port (nothing without one).
standby_address() {
    local port
    port=$(standby_port "$1")
    if [[ -n $port ]]; then echo "127.0.0.1:$port"; fi
}

# ---------------------------------------------------------------------------------------------
# Health

all_ports() {
    local service k
    echo "$GATEWAY_PORT" "$BROKER_PORT" "$((BROKER_PORT + 1))"
    for service in "${SERVICES[@]}"; do
        for ((k = 0; k < REDIS_NODES_PER_CLUSTER; k++)); do
            echo $(($(redis_port_base "$service") + k))
        done
        standby_port "$service"
        for ((k = 0; k < $(service_replicas "$service"); k++)); do
            echo $(($(service_port_base "$service") + k))
        done
    done
}

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() {
    local port busy=()
    for port in $(all_ports); do
        if port_open "$port"; then busy+=("$port"); fi
    done
    ((${#busy[@]} == 0)) ||
        die "ports in use by something else: ${busy[*]} (another stack? see the settings in $0)"
}

redis() { redis-cli -h 127.0.0.1 -p "$@"; }

cluster_ports() {
    local base k
    base=$(redis_port_base "$1")
    for ((k = 0; k < REDIS_NODES_PER_CLUSTER; k++)); do echo $((base + k)); done
}

nodes_answer() {
    local port
    for port in $(cluster_ports "$1"); do
        [[ $(redis "$port" ping 2>/dev/null) == PONG ]] || return 1
    done
}

# Every node sees a healthy cluster of all six, and every replica is in sync with its master.
cluster_ok() {
    local port info
    for port in $(cluster_ports "$1"); do
        info=$(redis "$port" cluster info 2>/dev/null) || return 1
        [[ $info == *cluster_state:ok* && $info == *"cluster_known_nodes:$REDIS_NODES_PER_CLUSTER"* ]] ||
            return 1
        info=$(redis "$port" info replication 2>/dev/null) || return 1
        [[ $info != *role:slave* || $info == *master_link_status:up* ]] || return 1
    done
}

# Creates the cluster unless its nodes already know each other (a restart keeps nodes.conf).
form_cluster() {
    local service=$1 port nodes=() log_file
    for port in $(cluster_ports "$service"); do
        [[ $(redis "$port" cluster info) == *cluster_known_nodes:1$'\r'* ]] || return 0
        nodes+=("127.0.0.1:$port")
    done
    log "creating the $service Redis Cluster"
    log_file="$LOG_DIR/cluster-create-$service.log"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
        >"$log_file" 2>&1 || { cat "$log_file" >&2; die "could not create the $service cluster"; }
}

supervisor_status() { ctl status 2>/dev/null || true; }

all_running() {
    local status
    status=$(supervisor_status)
    [[ -n $status ]] && ! grep -qv ' RUNNING ' <<<"$status"
}

http_ok() { curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; }

workers_healthy() {
    local service k standby
    for service in "${SERVICES[@]}"; do
        for ((k = 0; k < $(service_replicas "$service"); k++)); do
            http_ok "http://127.0.0.1:$(($(service_port_base "$service") + k))/ready" || return 1
        done
        standby=$(standby_port "$service")
        if [[ -n $standby ]]; then http_ok "http://127.0.0.1:$standby/ready" || return 1; fi
    done
}

gateway_healthy() {
    local prefix
    for prefix in orders payment stock; do
        http_ok "http://127.0.0.1:$GATEWAY_PORT/$prefix/health" || return 1
    done
}

# wait_for DESCRIPTION LOGS COMMAND...: retries COMMAND until it succeeds; past the deadline of
# `up`, fails showing the log tails of the processes not running and of those whose names match
# the regex LOGS.
wait_for() {
    local what=$1 logs=$2
    shift 2
    until "$@"; do
        ((SECONDS < DEADLINE)) || up_failed "$what" "$logs"
        sleep 0.2
    done
}

up_failed() {
    local status line name
    log "ERROR: timed out after ${UP_TIMEOUT_S}s waiting for: $1"
    status=$(supervisor_status)
    echo "$status" >&2
    while read -r line; do
        name=${line%% *}
        if [[ $line == *" RUNNING "* && ! $name =~ ^($2)$ ]]; then continue; fi
        echo "--- last lines of $LOG_DIR/$name.log" >&2
        tail -n 20 "$LOG_DIR/$name.log" >&2 2>/dev/null || true
    done <<<"$status"
    if [[ $2 == supervisord ]]; then tail -n 20 "$LOG_DIR/supervisord.log" >&2 || true; fi
    log "logs are in $LOG_DIR; stop with: $0 down"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Gateway reloads and scaling

# The gateway's client connections: "inode ms-since-last-send ms-since-last-receive" each.
gateway_connections() {
    ss -tieOHn state established "( sport = :$GATEWAY_PORT )" 2>/dev/null | awk '{
        ino = ""; snd = 1e12; rcv = 1e12
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^ino:/) ino = substr($i, 5)
            else if ($i ~ /^lastsnd:/) snd = substr($i, 9)
            else if ($i ~ /^lastrcv:/) rcv = substr($i, 9)
        }
        if (ino != "") print ino, snd, rcv
    }'
}

# Waits until no connection that the gateway held when it began draining can still be reused
# by its client: each is closed, or idle (its last request answered, nothing sent since) for
# half a second. The others got "Connection: close" on their request after the drain began.
# Gives up after the longest checkout wait (a request in flight that long).
wait_for_gateway_drain() {
    local before busy deadline=$((SECONDS + $(checkout_wait_max_s)))
    before=$(gateway_connections | awk '{ print $1 }')
    while [[ -n $before ]]; do
        busy=$(gateway_connections | awk -v before="$before" 'BEGIN {
            n = split(before, list, "\n"); for (i = 1; i <= n; i++) old[list[i]] = 1
        } ($1 in old) && !($3 >= $2 && $2 >= 500) { print $1 }')
        [[ -n $busy ]] || break
        if ((SECONDS >= deadline)); then
            log "WARNING: reloading the gateway with $(wc -w <<<"$busy") connections still busy"
            break
        fi
        sleep 0.05
    done
}

# The pids of the gateway's worker processes that serve (not those shutting down).
gateway_workers() {
    local pid title
    for pid in $(procs_in pgrp "$1"); do
        [[ $pid != "$1" ]] || continue
        title=$({ tr -s '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
        if [[ $title == "nginx: worker process " ]]; then echo "$pid"; fi
    done
}

# Applies a changed upstreams.conf to the running gateway without dropping a client connection:
# drain (local/nginx.conf.in says why and how), reload, and return once a new worker serves.
# The worker processes it replaced, which finish the requests they hold with the old upstreams,
# are left in RETIRED_GATEWAY_WORKERS (wait_for_retired_gateway_workers).
RETIRED_GATEWAY_WORKERS=""
reload_gateway() {
    local master="" old current tries
    RETIRED_GATEWAY_WORKERS=""
    [[ -f $NGINX_DIR/nginx.pid ]] && master=$(<"$NGINX_DIR/nginx.pid")
    if ! is_uint "$master" || ! alive "$master"; then
        log "the gateway is not running: it reads the new configuration when it starts"
        return
    fi
    "$(command -v nginx)" -t -q -p "$NGINX_DIR/" -c "$NGINX_DIR/nginx.conf" -e stderr ||
        die "the new gateway configuration does not load ($NGINX_DIR)"
    touch "$NGINX_DIR/draining"
    wait_for_gateway_drain
    old=$(gateway_workers "$master")
    RETIRED_GATEWAY_WORKERS=$old
    kill -HUP "$master"
    for ((tries = 0; tries < 200; tries++)); do
        current=$(gateway_workers "$master")
        if [[ -n $current ]] && ! grep -qxF -f <(printf '%s\n' "$old") <<<"$current"; then
            break
        fi
        sleep 0.05
    done
    rm -f "$NGINX_DIR/draining"
    ((tries < 200)) || die "the gateway did not reload in 10s (see $LOG_DIR/gateway.log)"
}

# Waits until the gateway's replaced worker processes have exited: each exits once the requests
# it held are answered. Until then such a request may still be sent to a worker the reload took
# out: if the worker it is on dies, nginx retries it on the next ones of the old upstreams, and
# workers told to stop refuse it; after proxy_next_upstream_tries of them the client gets a 502
# (a success to the course's clients, whatever the checkout's saga does). So `scale` stops
# workers only after this. Gives up after the longest checkout wait.
wait_for_retired_gateway_workers() {
    local pid deadline=$((SECONDS + $(checkout_wait_max_s) + 5))
    for pid in $RETIRED_GATEWAY_WORKERS; do
        while alive "$pid" && grep -q '^nginx' "/proc/$pid/cmdline" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "WARNING: the gateway's old worker $pid still serves requests; stopping anyway"
                return
            fi
            sleep 0.05
        done
    done
}

# Seconds since an $EPOCHREALTIME, as "1.2s".
since() {
    local now=${EPOCHREALTIME/[.,]/} then=${1/[.,]/}
    printf '%d.%ds' $(((now - then) / 1000000)) $(((now - then) % 1000000 / 100000))
}

# Whether the named workers ("order-2" ...) answer /ready (their consumers joined their groups).
workers_ready() {
    local name
    for name in "$@"; do
        http_ok "http://127.0.0.1:$(($(service_port_base "${name%-*}") + ${name##*-}))/ready" ||
            return 1
    done
}

# scale_to SERVICE=N... on the running stack. New workers start and join their consumer groups
# (each group rebalances), then the gateway sends them requests. Workers to remove first leave
# the gateway, then, once the gateway's old worker processes have answered what they held, get
# SIGTERM, the way a pod is stopped: each answers what it holds, commits what it consumed,
# leaves its groups and exits. One gateway reload for all the changes.
scale_to() {
    local pair service wanted current k started_at=$EPOCHREALTIME
    local starting=() stopping=() jobs=() job changes=()
    for pair in "$@"; do
        service=${pair%%=*} wanted=${pair#*=}
        current=$(service_replicas "$service")
        ((wanted != current)) || continue
        changes+=("$service $current -> $wanted")
        for ((k = current; k < wanted; k++)); do starting+=("$service-$k"); done
        for ((k = wanted; k < current; k++)); do stopping+=("$service-$k"); done
        set_service_replicas "$service" "$wanted"
        if ((wanted > current)); then generate_service "$service"; fi
    done
    if ((${#changes[@]} == 0)); then
        log "nothing to change"
        return
    fi
    if ((${#starting[@]} > 0)); then
        ctl update "${starting[@]}" >/dev/null
        for k in "${starting[@]}"; do
            ctl start "$k" >/dev/null &
            jobs+=($!)
        done
        for job in "${jobs[@]}"; do wait "$job" || true; done
        log "started ${starting[*]} ($(since "$started_at")); waiting for them to join their groups"
        wait_for "${starting[*]} ready (consumers joined)" "$(IFS='|'; echo "${starting[*]}")" \
            workers_ready "${starting[@]}"
        log "${starting[*]} joined their groups ($(since "$started_at"))"
    fi
    generate_gateway
    reload_gateway
    ctl update holder >/dev/null
    write_stack_env
    write_running_env
    log "the gateway has the new set of workers ($(since "$started_at"))"
    if ((${#stopping[@]} > 0)); then
        wait_for_retired_gateway_workers
        log "the gateway's old workers are done ($(since "$started_at")); stopping ${stopping[*]}"
        jobs=()
        for k in "${stopping[@]}"; do
            ctl stop "$k" >/dev/null &
            jobs+=($!)
        done
        for job in "${jobs[@]}"; do wait "$job" || true; done
        for k in "${stopping[@]}"; do rm -f "$STATE_DIR/programs/$k.conf"; done
        ctl update "${stopping[@]}" >/dev/null
        log "stopped ${stopping[*]} ($(since "$started_at"))"
    fi
    local summary
    summary=$(IFS=','; echo "${changes[*]}")
    log "${summary//,/, } workers in $(since "$started_at")"
}

# ---------------------------------------------------------------------------------------------
# Commands

# The settings a running stack keeps: its processes listen on these ports and find each other by
# them. Moved live they disagree: the gateway was reloaded onto worker ports nothing listened on
# yet (checkouts answered 502), or workers restarted towards Redis nodes and a broker that kept
# their ports (`up` timed out with that service stopped).
PORT_SETTINGS=(GATEWAY_PORT BROKER_PORT ORDER_PORT_BASE PAYMENT_PORT_BASE STOCK_PORT_BASE
    ORDER_REDIS_PORT_BASE PAYMENT_REDIS_PORT_BASE STOCK_REDIS_PORT_BASE)

# Dies, before anything changes, if this command's settings would move a port of the running
# stack.
check_ports_kept() {
    local name running moved=()
    for name in "${PORT_SETTINGS[@]}"; do
        running=$(sed -n "s/^$name=//p" "$RUNNING_ENV")
        if is_uint "$running" && ((10#$running != 10#${!name})); then
            moved+=("$name=${!name} (it runs with $running)")
        fi
    done
    ((${#moved[@]} == 0)) || die "the running stack ($STATE_DIR) keeps its ports, not: \
${moved[*]}; give its settings, or stop it first ($0 down)"
}

cmd_up() {
    local service job jobs started_at=$SECONDS current
    local -A wanted=()
    DEADLINE=$((SECONDS + UP_TIMEOUT_S))
    setup_machine requirements.txt
    if supervisord_pid >/dev/null && [[ -f $RUNNING_ENV ]]; then
        check_ports_kept
        # The running workers stay as they are here; counts that change are scaled at the end.
        for service in "${SERVICES[@]}"; do
            current=$(running_replicas "$service")
            wanted[$service]=$current
            if [[ " ${REPLICAS_GIVEN[*]} " == *" $service "* ]]; then
                wanted[$service]=$(service_replicas "$service")
            fi
            set_service_replicas "$service" "$current"
        done
    fi
    generate_configs
    if supervisord_pid >/dev/null; then
        if ((GATEWAY_CHANGED)); then reload_gateway; fi
        ctl update | grep -v '^$' >&2 || true
    else
        sweep_dead_session
        rm -f "$NGINX_DIR/draining"
        check_ports_free
        log "starting supervisord ($STATE_DIR)"
        # (Without the lock of this command: supervisord would hold it as long as it runs.)
        "$VENV_DIR/bin/python" "$LOCAL_DIR/supervisord.py" -c "$SV_CONF" {STACK_LOCK}>&-
        wait_for "supervisord" supervisord supervisord_pid >/dev/null
        echo "$(supervisord_pid) $(boot_id)" >"$SV_SIDFILE"
    fi
    for service in "${SERVICES[@]}"; do
        wait_for "the $service Redis nodes" "redis-$service-[0-9]+" nodes_answer "$service"
    done
    # Creating a cluster takes redis-cli a few seconds of waiting: create the three at once.
    jobs=()
    for service in "${SERVICES[@]}"; do
        form_cluster "$service" &
        jobs+=($!)
    done
    for job in "${jobs[@]}"; do wait "$job" || die "could not create the Redis Clusters"; done
    for service in "${SERVICES[@]}"; do
        wait_for "the $service Redis Cluster" "redis-$service-[0-9]+" cluster_ok "$service"
    done
    wait_for "the broker on port $BROKER_PORT" broker port_open "$BROKER_PORT"
    all_running || ctl start all >/dev/null || true
    wait_for "every process RUNNING" "" all_running
    wait_for "every worker's /ready (consumers joined)" "(order|payment|stock)-([0-9]+|standby)" \
        workers_healthy
    wait_for "the gateway on port $GATEWAY_PORT" gateway gateway_healthy
    local pairs=()
    for service in "${!wanted[@]}"; do
        if ((wanted[$service] != $(service_replicas "$service"))); then
            pairs+=("$service=${wanted[$service]}")
        fi
    done
    if ((${#pairs[@]} > 0)); then
        WANTED_PROGRAMS=()
        scale_to "${pairs[@]}"
    fi
    log "stack up in $((SECONDS - started_at))s: http://127.0.0.1:$GATEWAY_PORT (state: $STATE_DIR)"
}

# Prints the pids of running programs whose names match the regex $1.
program_pids() {
    supervisor_status | awk -v re="^($1)\$" '$1 ~ re && $3 == "pid" { sub(",", "", $4); print $4 }'
}

# terminate SIGNAL SECONDS PID...: sends SIGNAL to the given pids (and the process groups they
# lead); waits up to SECONDS for them to exit.
terminate() {
    local signal=$1 seconds=$2 pid tries left
    shift 2
    for pid in "$@"; do
        kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid" 2>/dev/null || true
    done
    for ((tries = 0; tries < seconds * 10; tries++)); do
        left=0
        for pid in "$@"; do
            if alive "$pid"; then left=1; fi
        done
        ((left)) || return 0
        sleep 0.1
    done
}

# stop_in_order GATEWAY WORKERS STATE (each a list of pids): three waves, each in parallel: the
# gateway, which answers the requests it holds (SIGQUIT, generate_gateway) while the workers,
# the broker and Redis still serve them; then the workers; then the broker and Redis. (Stopping
# the gateway and the workers at once dropped the checkouts in flight, and Redis and the broker
# 10 s later left workers holding checkouts unable to end them.)
stop_in_order() {
    local wait_s
    wait_s=$(gateway_stop_wait_s)
    # shellcheck disable=SC2086 # lists of pids
    terminate QUIT "$wait_s" $1
    # shellcheck disable=SC2086
    terminate TERM "$wait_s" $2
    # shellcheck disable=SC2086
    terminate TERM 10 $3
}

cmd_down() {
    local pid tries gateway web state
    if pid=$(supervisord_pid); then
        log "stopping the stack ($STATE_DIR)"
        # supervisord alone would stop its programs one after the other; once it is shutting
        # down it restarts none, so they are stopped in waves (stop_in_order).
        gateway=$(program_pids gateway)
        web=$(program_pids '(order|payment|stock)-([0-9]+|standby)')
        state=$(program_pids 'broker|redis-.*')
        kill -TERM "$pid"
        stop_in_order "$gateway" "$web" "$state"
        for ((tries = 0; tries < 600; tries++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "supervisord did not stop in 60s; killing it"
            kill_and_wait "$pid"
        fi
    fi
    sweep_dead_session
    rm -f "$SOCKET" "$RUNNING_ENV" "$NGINX_DIR/draining"
    if [[ ${1:-} == --clean ]]; then
        rm -rf "$STATE_DIR"
        log "deleted $STATE_DIR"
    fi
}

cmd_status() {
    supervisord_pid >/dev/null || { log "the stack is down ($STATE_DIR)"; return 3; }
    supervisor_status | awk '{ pid = ($3 == "pid") ? $4 : "-"; sub(",", "", pid); print $1, $2, pid }'
}

cmd_scale() {
    local service count pairs=() seen=" "
    (($# >= 2 && $# % 2 == 0)) ||
        die "usage: $0 scale SERVICE N [SERVICE N ...] (SERVICE: ${SERVICES[*]}; N: 1-$MAX_REPLICAS)"
    while (($# > 0)); do
        service=$1 count=$2
        shift 2
        [[ " ${SERVICES[*]} " == *" $service "* ]] ||
            die "unknown service '$service' (one of: ${SERVICES[*]})"
        [[ $seen != *" $service "* ]] || die "$service is named twice"
        seen+="$service "
        check_replicas "the number of $service workers" "$count"
        pairs+=("$service=$((10#$count))")
    done
    if ! supervisord_pid >/dev/null || [[ ! -f $RUNNING_ENV ]]; then
        die "the stack is down ($STATE_DIR): start it with $0 up (ORDER_REPLICAS=N etc. \
start it with other counts)"
    fi
    load_running_settings
    DEADLINE=$((SECONDS + UP_TIMEOUT_S))
    WANTED_PROGRAMS=()
    scale_to "${pairs[@]}"
}

cmd_pid() {
    local pid
    (($# == 1)) || die "usage: $0 pid NAME"
    pid=$(ctl pid "$1") || true
    if ! is_uint "$pid" || ((pid == 0)); then die "$1 is not running"; fi
    echo "$pid"
}

main() {
    local command=${1:-up}
    (($# > 0)) && shift
    load_settings
    set_paths
    # One up/down at a time on a state dir.
    if [[ $command == @(up|down|reset|scale) ]]; then
        exec {STACK_LOCK}>"$STATE_DIR/.lock"
        flock -n "$STACK_LOCK" || {
            log "waiting for another $0 on $STATE_DIR"
            flock "$STACK_LOCK"
        }
    fi
    case $command in
        up) cmd_up ;;
        down) cmd_down "$@" ;;
        reset) cmd_down --clean ;;
        status) cmd_status ;;
        pid) cmd_pid "$@" ;;
        ctl) ctl "$@" ;;
        env) cat "$STATE_DIR/stack.env" ;;
        scale) cmd_scale "$@" ;;
        *) die "unknown command '$command' (up, down [--clean], reset, status, pid, ctl, env, \
scale SERVICE N ...)" ;;
    esac
}

main "$@"

# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts sourcing this
# Shared by run_local.sh and run_tests.sh: settings, machine setup (Debian packages and the
# virtualenv) and a few helpers. Sourcing it defines functions and settings only.

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR="$REPO_DIR/local"
VENV_DIR="$REPO_DIR/.venv"

# iproute2: `ss`, with which a gateway reload waits for its clients' connections to drain.
APT_PACKAGES=(redis-server redis-tools nginx-light curl iproute2)
# The broker: Apache Kafka from Maven Central (local/kafka/pom.xml pins it) on a Java 17 runtime.
KAFKA_POM="$LOCAL_DIR/kafka/pom.xml"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")
KAFKA_LIBS="$REPO_DIR/.kafka/$KAFKA_VERSION/libs"
SERVICES=(order payment stock)
REDIS_NODES_PER_CLUSTER=6
# The most workers of one service: each topic has this many partitions (TOPIC_PARTITIONS, which
# the services create their topics with; env/common.env holds the code's default), and a worker
# beyond that would consume nothing.
MAX_REPLICAS=$(sed -n "s/^TOPIC_PARTITIONS=//p" "$REPO_DIR/env/common.env")
# Variables handed from the caller's environment to every service worker when set.
PASS_THROUGH_VARS=(KAFKA_LINGER_MS CHECKOUT_TIMEOUT_MS CHECKOUT_ANSWER_MS CHECKOUT_STEPS SAGA_STEP_TIMEOUT_MS
    SAGA_DEADLINE_MS LOG_LEVEL LOG_FORMAT LOG_MESSAGES OTEL_EXPORTER OTEL_EXPORTER_OTLP_ENDPOINT)

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# The settings of load_settings (with the pass-through ones, those a running stack keeps).
SETTING_NAMES=(GATEWAY_PORT BROKER_PORT ORDER_REPLICAS PAYMENT_REPLICAS STOCK_REPLICAS
    ORDER_PORT_BASE PAYMENT_PORT_BASE STOCK_PORT_BASE ORDER_REDIS_PORT_BASE PAYMENT_REDIS_PORT_BASE
    STOCK_REDIS_PORT_BASE REDIS_CLUSTER_NODE_TIMEOUT_MS UP_TIMEOUT_S STANDBY)

# Reads the settings documented at the top of run_local.sh into shell variables.
load_settings() {
    local service
    # The services whose worker count the environment gives (on a running stack, `up` keeps the
    # current count of the others: the one `scale` set).
    REPLICAS_GIVEN=()
    for service in "${SERVICES[@]}"; do
        local given="${service^^}_REPLICAS"
        if [[ -n ${!given:-} || -n ${REPLICAS:-} ]]; then REPLICAS_GIVEN+=("$service"); fi
    done
    STATE_DIR=${STATE_DIR:-$REPO_DIR/.run}
    GATEWAY_PORT=${GATEWAY_PORT:-8000}
    BROKER_PORT=${BROKER_PORT:-9092}
    REPLICAS=${REPLICAS:-1}
    STANDBY=${STANDBY:-1}
    ORDER_REPLICAS=${ORDER_REPLICAS:-$REPLICAS}
    PAYMENT_REPLICAS=${PAYMENT_REPLICAS:-$REPLICAS}
    STOCK_REPLICAS=${STOCK_REPLICAS:-$REPLICAS}
    ORDER_PORT_BASE=${ORDER_PORT_BASE:-8100}
    PAYMENT_PORT_BASE=${PAYMENT_PORT_BASE:-8200}
    STOCK_PORT_BASE=${STOCK_PORT_BASE:-8300}
    ORDER_REDIS_PORT_BASE=${ORDER_REDIS_PORT_BASE:-7000}
    PAYMENT_REDIS_PORT_BASE=${PAYMENT_REDIS_PORT_BASE:-7100}
    STOCK_REDIS_PORT_BASE=${STOCK_REDIS_PORT_BASE:-7200}
    REDIS_CLUSTER_NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-3000}
    UP_TIMEOUT_S=${UP_TIMEOUT_S:-120}

    local name
    for name in GATEWAY_PORT BROKER_PORT REPLICAS ORDER_REPLICAS PAYMENT_REPLICAS \
        STOCK_REPLICAS ORDER_PORT_BASE PAYMENT_PORT_BASE STOCK_PORT_BASE ORDER_REDIS_PORT_BASE \
        PAYMENT_REDIS_PORT_BASE STOCK_REDIS_PORT_BASE REDIS_CLUSTER_NODE_TIMEOUT_MS \
        UP_TIMEOUT_S; do
        is_uint "${!name}" || die "$name must be a non-negative integer, got '${!name}'"
        # In decimal: bash's arithmetic reads a leading 0 as octal (07600 was port 3968, 09092
        # an error).
        printf -v "$name" %d "$((10#${!name}))"
    done
    [[ $STANDBY == [01] ]] || die "STANDBY must be 0 or 1, got '$STANDBY'"
    check_ports
    for name in CHECKOUT_TIMEOUT_MS CHECKOUT_ANSWER_MS; do
        if [[ -n ${!name:-} ]] && ! is_uint "${!name}"; then
            die "$name must be a non-negative integer, got '${!name}'"
        fi
    done
    for name in ORDER_REPLICAS PAYMENT_REPLICAS STOCK_REPLICAS; do
        check_replicas "$name" "${!name}"
    done
    mkdir -p "$STATE_DIR"
    STATE_DIR=$(cd "$STATE_DIR" && pwd)
}

# Dies unless every port the stack would listen on exists: each setting plus the most the stack
# adds to it (a worker count up to MAX_REPLICAS, the standby, the broker's controller, the six
# Redis nodes and their cluster bus, 10000 above each). A port past 65535 was only found once
# its process kept failing to start, after `up` had started everything else.
check_ports() {
    local name service
    check_port GATEWAY_PORT 0
    check_port BROKER_PORT 1
    for service in "${SERVICES[@]}"; do
        name="${service^^}_PORT_BASE"
        check_port "$name" $((STANDBY_PORT_OFFSET > MAX_REPLICAS - 1 ? STANDBY_PORT_OFFSET : MAX_REPLICAS - 1))
        check_port "${service^^}_REDIS_PORT_BASE" $((REDIS_NODES_PER_CLUSTER - 1 + REDIS_BUS_PORT_OFFSET))
    done
}

# check_port NAME SPAN: dies unless NAME's value and the SPAN ports above it are ports.
check_port() {
    local above=""
    if (($2 > 0)); then above=" (the stack also listens on ports up to $2 above it)"; fi
    ((${!1} >= 1 && ${!1} + $2 <= 65535)) || die "$1 must be from 1 to $((65535 - $2))$above, got ${!1}"
}

# check_replicas WHAT N: dies unless N is a worker count this stack can run.
check_replicas() {
    is_uint "$2" || die "$1 must be a whole number, got '$2'"
    ((10#$2 >= 1)) || die "$1 must be at least 1, got $2"
    ((10#$2 <= MAX_REPLICAS)) || die "$1 is $2, but at most $MAX_REPLICAS workers of a service \
can share its work: each topic has $MAX_REPLICAS partitions, and a worker beyond that would get none"
}

# The longest an HTTP checkout is held, in seconds: its answer budget (common/saga/verdict.py),
# CHECKOUT_ANSWER_MS or CHECKOUT_TIMEOUT_MS if that is longer, which covers its turn, its saga
# and the compensation of a saga it turned back. (The containers' entrypoint gives hypercorn
# this + 5 s too.)
checkout_wait_max_s() {
    local answer=${CHECKOUT_ANSWER_MS:-55000} timeout=${CHECKOUT_TIMEOUT_MS:-20000}
    echo $((((10#$answer > 10#$timeout ? 10#$answer : 10#$timeout) + 999) / 1000))
}

# How long the gateway's holder waits for a worker of a service to take a request that every
# worker failed (common/holder.py), and the gateway's proxy_read_timeout (env/gateway/routes.conf),
# the longest it lets a worker take to answer.
HOLD_S=10
GATEWAY_READ_TIMEOUT_S=60

# The gateway's path prefix of a service: /orders/ reaches order.
gateway_prefix() { if [[ $1 == order ]]; then echo orders; else echo "$1"; fi; }

# Settings of one service, by name: replicas, first HTTP port, first Redis port.
service_replicas() { local v="${1^^}_REPLICAS"; echo "${!v}"; }
set_service_replicas() { printf -v "${1^^}_REPLICAS" %s "$2"; }
service_port_base() { local v="${1^^}_PORT_BASE"; echo "${!v}"; }
# The standby's HTTP port (STANDBY_PORT_OFFSET above the first worker's), or nothing without one.
STANDBY_PORT_OFFSET=99
# A Redis Cluster node's bus port is this far above its port.
REDIS_BUS_PORT_OFFSET=10000
standby_port() {
    if ((STANDBY)); then echo $(($(service_port_base "$1") + STANDBY_PORT_OFFSET)); fi
}
redis_port_base() { local v="${1^^}_REDIS_PORT_BASE"; echo "${!v}"; }

# "127.0.0.1:7000,127.0.0.1:7001,..." for one service's cluster.
redis_nodes() {
    local base k nodes=()
    base=$(redis_port_base "$1")
    for ((k = 0; k < REDIS_NODES_PER_CLUSTER; k++)); do nodes+=("127.0.0.1:$((base + k))"); done
    local IFS=,
    echo "${nodes[*]}"
}

# ---------------------------------------------------------------------------------------------
# Machine setup

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

package_installed() {
    [[ $(dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# A Python >= 3.11 that can make virtualenvs; prints its path, or nothing.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        if [[ -z $candidate ]] || ! command -v "$candidate" >/dev/null; then continue; fi
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

# Debian services that apt may have started on install would hold ports 6379 and 80.
stop_debian_services() {
    local service
    for service in redis-server nginx; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
            as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/$service ]]; then
            as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        fi
    done
}

ensure_packages() {
    local missing=() package python
    for package in "${APT_PACKAGES[@]}"; do
        package_installed "$package" || missing+=("$package")
    done
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || missing+=(maven)
    python=$(find_python)
    if [[ -z $python ]]; then
        missing+=(python3 python3-venv)
    elif ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    ((${#missing[@]} == 0)) && return
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    stop_debian_services
}

file_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Creates .venv if needed and installs a requirements file (its path in the repo) into it when it
# changed since the last install (a hash stamp inside .venv remembers what was installed).
ensure_venv() {
    local name=$1 requirements="$REPO_DIR/$1" stem stamp python wanted
    # One stamp per file, named after its path (stress-test/requirements.txt is not the
    # top-level requirements.txt).
    stem=${name%.txt}
    stamp="$VENV_DIR/.stamp-${stem//\//-}"
    if ! "$VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then
        python=$(find_python)
        [[ -n $python ]] || die "no Python >= 3.11 found"
        log "creating virtualenv $VENV_DIR with $python"
        rm -rf "$VENV_DIR"
        "$python" -m venv "$VENV_DIR"
    fi
    # requirements-dev.txt includes requirements.txt, so both count for its stamp.
    wanted=$(file_hash "$requirements" "$REPO_DIR/requirements.txt")
    [[ -f $stamp && $(<"$stamp") == "$wanted" ]] && return
    log "installing $name into .venv"
    if ! "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check \
        -r "$requirements" >"$VENV_DIR/pip-install.log" 2>&1; then
        tail -n 30 "$VENV_DIR/pip-install.log" >&2
        die "pip install -r $requirements failed (log: $VENV_DIR/pip-install.log)"
    fi
    echo "$wanted" >"$stamp"
}

# Apache Kafka's jars in KAFKA_LIBS, copied by Maven from Maven Central (its local repository
# keeps them for the next install); a stamp remembers which pom they came from.
ensure_kafka() {
    local stamp="$KAFKA_LIBS/.installed" wanted log_file="${KAFKA_LIBS%/libs}/maven.log"
    wanted=$(file_hash "$KAFKA_POM")
    [[ -f $stamp && $(<"$stamp") == "$wanted" ]] && return
    log "installing Apache Kafka $KAFKA_VERSION from Maven Central into ${KAFKA_LIBS%/libs}"
    rm -rf "$KAFKA_LIBS"
    mkdir -p "$KAFKA_LIBS"
    if ! mvn -B -f "$KAFKA_POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIBS" >"$log_file" 2>&1; then
        tail -n 30 "$log_file" >&2
        die "could not fetch Apache Kafka with Maven (log: $log_file)"
    fi
    echo "$wanted" >"$stamp"
}

# The broker's class archive (see local/broker.sh), made anew when the jars, the way it is made
# or the warm-up changed; it needs aiokafka, so it comes after .venv.
ensure_broker_archive() {
    local stamp="${KAFKA_LIBS%/libs}/classes.jsa.stamp" wanted
    wanted=$(file_hash "$KAFKA_LIBS/.installed" "$LOCAL_DIR/broker.sh" "$LOCAL_DIR/kafka_warmup.py")
    [[ -f $stamp && $(<"$stamp") == "$wanted" ]] && return
    log "making the broker's class archive (a throw-away broker, crashed, restarted, warmed up)"
    "$LOCAL_DIR/broker.sh" archive "$KAFKA_LIBS" "$VENV_DIR/bin/python" ||
        log "no new class archive for the broker (it starts slower without one)"
    echo "$wanted" >"$stamp" # tried once: a failure is not tried again at every start
}

# setup_machine REQUIREMENTS_FILE...: everything the stack needs on this machine, and the given
# requirements files (relative to the repo) in .venv; fast when already done.
setup_machine() {
    local lock_fd requirements
    # One setup at a time (run_local.sh and run_tests.sh share .venv).
    exec {lock_fd}>"${TMPDIR:-/tmp}/checkout-setup-$EUID.lock"
    flock "$lock_fd"
    ensure_packages
    ensure_kafka
    for requirements in "$@"; do
        ensure_venv "$requirements"
    done
    ensure_broker_archive
    exec {lock_fd}>&-
}

# ---------------------------------------------------------------------------------------------
# Processes

# Prints the pids of processes whose process group ($1 = pgrp) or session ($1 = session) is $2.
procs_in() {
    local kind=$1 id=$2 stat line pid fields
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        pid=${line%% *}
        # After the command name, which may hold spaces: state ppid pgrp session ...
        read -r -a fields <<<"${line##*) }"
        if [[ $kind == pgrp && ${fields[2]} == "$id" ]] ||
            [[ $kind == session && ${fields[3]} == "$id" ]]; then
            echo "$pid"
        fi
    done
}

# The session id of process $1.
session_of() {
    local line fields
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    read -r -a fields <<<"${line##*) }"
    echo "${fields[3]}"
}

# True if process $1 exists and is not a zombie.
alive() {
    local line fields
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    read -r -a fields <<<"${line##*) }"
    [[ ${fields[0]} != Z ]]
}

# SIGKILLs the given pids and waits (up to 5 s) until they are gone.
kill_and_wait() {
    local pid tries left
    (($# == 0)) && return
    kill -KILL "$@" 2>/dev/null || true
    for ((tries = 0; tries < 50; tries++)); do
        left=()
        for pid in "$@"; do
            if alive "$pid"; then left+=("$pid"); fi
        done
        ((${#left[@]} == 0)) && return
        sleep 0.1
    done
    log "WARNING: still running after SIGKILL: ${left[*]}"
}

#!/usr/bin/env bash
# The local Apache Kafka broker (one KRaft node, broker and controller), run by supervisord as the
# program `broker`. Formats the log directory first when it holds no log (the first start, or a
# log deleted to bring the broker back empty), then becomes the broker.
#
# Usage: local/broker.sh KAFKA_LIBS SERVER_PROPERTIES LOG_DIR CLUSTER_ID
set -euo pipefail
libs=$1 properties=$2 log_dir=$3 cluster_id=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Sized for a 2-core machine that runs some 30 other processes: a small fixed heap, the serial
# collector (no GC threads of its own), two JIT compiler threads.
java_options=(
    -Xms512m -Xmx512m -XX:+UseSerialGC -XX:CICompilerCount=2 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties"
)

if [[ ! -f $log_dir/meta.properties ]]; then
    mkdir -p "$log_dir"
    java "${java_options[@]}" -cp "$libs/*" kafka.tools.StorageTool format --ignore-formatted \
        -t "$cluster_id" -c "$properties"
fi
exec java "${java_options[@]}" -cp "$libs/*" kafka.Kafka "$properties"

#!/bin/bash
# Creates the checkout saga's topics (idempotent). Run by the one-shot `kafka-init` service of
# docker-compose.yml inside the apache/kafka image; k8s/kafka-topics-job.yaml does the same.
#   KAFKA_BOOTSTRAP_SERVERS  broker list (default kafka:9092)
#   TOPIC_PARTITIONS         partitions per topic (default 16)
#   TOPIC_REPLICATION        replication factor (default 1: a single broker)
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
partitions="${TOPIC_PARTITIONS:-16}"
replication="${TOPIC_REPLICATION:-1}"
topics=(STOCK STOCK_PROCESSING PAYMENT PAYMENT_PROCESSING ORDER_STATUS_UPDATE)
kafka_topics=/opt/kafka/bin/kafka-topics.sh

for topic in "${topics[@]}"; do
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor "$replication"
done

# --if-not-exists keeps a topic that already exists as it is; say so if its partition count
# differs (growing it would move keys between partitions under running sagas).
described="$("$kafka_topics" --bootstrap-server "$bootstrap" --describe)"
for topic in "${topics[@]}"; do
    current="$(printf '%s\n' "$described" |
        sed -n "s/^Topic: *${topic}[[:space:]].*PartitionCount: *\([0-9][0-9]*\).*/\1/p")"
    if [ "$current" != "$partitions" ]; then
        echo "create-topics: WARNING: $topic has ${current:-?} partitions, not $partitions" >&2
    fi
done
echo "create-topics: ${topics[*]} ready"

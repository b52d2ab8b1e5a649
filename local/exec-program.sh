#!/usr/bin/env bash
# supervisord starts every program of the local stack through this wrapper, which execs the real
# command after killing whatever is left of the program's previous run. supervisord puts each
# program in a process group of its own; when a program is SIGKILLed its children can outlive it
# (a killed nginx master leaves its workers holding the gateway port), so the leftovers are the
# members of the previous run's process group that are still in supervisord's session.
set -euo pipefail
# shellcheck source=local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name=$1
shift
pgid_file="$STACK_STATE_DIR/pgid/$name"
if [[ -f $pgid_file ]]; then
    old_pgid=$(<"$pgid_file")
    session=$(session_of $$)
    leftovers=()
    for pid in $(procs_in pgrp "$old_pgid"); do
        if [[ $pid != "$$" && $(session_of "$pid") == "$session" ]]; then leftovers+=("$pid"); fi
    done
    if ((${#leftovers[@]} > 0)); then
        log "$name: killing leftovers of its previous run: ${leftovers[*]}"
        kill_and_wait "${leftovers[@]}"
    fi
fi
mkdir -p "$(dirname "$pgid_file")"
echo $$ >"$pgid_file"
exec "$@"

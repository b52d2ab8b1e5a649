#!/usr/bin/env bash
# One real checkout through a gateway, for an operator once `docker compose up` has started the
# gateway (which waits for healthy services); it serves any deployment's gateway: the local
# stack's, minikube's ingress (run_minikube.sh ends with it). It makes a new item
# (price 3, stock 5) and a new user (credit 10), orders 2 units and checks out, then passes
# only if the checkout answered 200, the order reads as paid, the stock is 3 and the credit 4.
# A read answering proves only that a route is up; a paid checkout with the right effects
# proves that every service reaches its Redis Cluster, every consumer joined its group and
# the saga runs end to end.
#
#   env/smoke-checkout.sh [GATEWAY_URL]     default http://127.0.0.1:8000
#
# Needs curl and python3. Exit 0: paid end to end; 1: what went wrong is printed.
set -euo pipefail

URL=${1:-http://127.0.0.1:8000}
URL=${URL%/}

fail() {
    printf 'smoke-checkout: FAILED: %s\n' "$*" >&2
    exit 1
}

# call METHOD PATH: the reply's body; fails unless it answers 200 (a checkout may take up to
# the gateway's read timeout, 60 s).
call() {
    local body status
    body=$(curl -sS --max-time 70 -X "$1" -w '\n%{http_code}' "$URL$2") ||
        fail "$1 $URL$2: no answer"
    status=${body##*$'\n'}
    body=${body%$'\n'*}
    [[ $status == 200 ]] || fail "$1 $URL$2 answered $status: $body"
    printf '%s\n' "$body"
}

# json METHOD PATH NAME: the field NAME of the JSON object METHOD PATH answers.
json() {
    local body
    body=$(call "$1" "$2") || exit 1
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$3" <<<"$body"
}

# expect WHAT ACTUAL WANTED
expect() {
    [[ $2 == "$3" ]] || fail "$1 is $2, not $3"
}

item=$(json POST /stock/item/create/3 item_id)
call POST "/stock/add/$item/5" >/dev/null
user=$(json POST /payment/create_user user_id)
call POST "/payment/add_funds/$user/10" >/dev/null
order=$(json POST "/orders/create/$user" order_id)
call POST "/orders/addItem/$order/$item/2" >/dev/null
call POST "/orders/checkout/$order" >/dev/null

paid=$(json GET "/orders/find/$order" paid)
stock=$(json GET "/stock/find/$item" stock)
credit=$(json GET "/payment/find_user/$user" credit)
expect "the order's paid flag" "$paid" True
expect "the item's stock" "$stock" 3
expect "the user's credit" "$credit" 4
echo "smoke-checkout: order $order paid through $URL: stock 5 -> 3, credit 10 -> 4"

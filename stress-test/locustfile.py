"""The course's stress test as a locustfile: every user checks out a random order of 0..99999
once a second, forever, so the same orders are checked out again and again.

Judged as the official client judges: only a 4xx is a failure; 2xx, 5xx and a dropped
connection are marked successes. The 5xx and connection errors are counted apart all the same
(this system must never produce them) and printed when the test stops, and written to
``<csv prefix>_status_classes.csv`` when locust runs with ``--csv``.

The host is ORDER_URL from ``../test/urls.json`` (or the file in $URLS_FILE); ``--host`` wins.
Initialise the data first with ``init_orders.py``. Headless run: see README.md.

The users are locust's ``HttpUser`` (the course's class); ``LOCUST_CLIENT=fast`` makes them
``FastHttpUser`` instead, which costs the load generator less CPU.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, HttpUser, constant, events, task

HERE = Path(__file__).resolve().parent
URLS_FILE = Path(os.environ.get("URLS_FILE", HERE.parent / "test" / "urls.json"))
N_ORDERS = 100_000

with URLS_FILE.open() as f:
    ORDER_URL = json.load(f)["ORDER_URL"].rstrip("/")

# Replies by class: "2xx", "4xx", "5xx", "conn-error" (no HTTP status at all).
status_classes: Counter[str] = Counter()
log = logging.getLogger("checkout-stress")


def status_class(status: int) -> str:
    return "conn-error" if status == 0 else f"{status // 100}xx"


FAST = os.environ.get("LOCUST_CLIENT", "http") == "fast"


class CheckoutUser(FastHttpUser if FAST else HttpUser):  # type: ignore[misc]
    """One shopper: a checkout of a random order, then a second of rest."""

    host = ORDER_URL
    wait_time = constant(1)
    # (FastHttpUser) The course's client waits up to 300 s for a reply.
    network_timeout = 300.0
    connection_timeout = 300.0

    @task
    def checkout(self) -> None:
        order_id = random.randrange(N_ORDERS)
        with self.client.post(
            f"/orders/checkout/{order_id}",
            name="/orders/checkout/[order_id]",
            catch_response=True,
        ) as response:
            kind = status_class(response.status_code or 0)
            status_classes[kind] += 1
            if kind == "4xx":
                response.failure(response.text)
            else:
                response.success()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # locust leaves it untyped
def report_status_classes(environment: Any, **_: Any) -> None:
    counts = {k: status_classes[k] for k in ("2xx", "4xx", "5xx", "conn-error")}
    log.info(
        "checkout replies: %s (5xx and connection errors were marked successes, as the "
        "official client does)",
        " ".join(f"{k}={v}" for k, v in counts.items()),
    )
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_status_classes.csv", "w") as out:
            out.write("class,count\n")
            out.writelines(f"{k},{v}\n" for k, v in counts.items())

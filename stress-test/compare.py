#!/usr/bin/env python3
"""This project beside the course template, in one run on one machine: the only comparison that
counts (machines differ and are noisy, so a figure from another run proves nothing).

Rounds alternate the two systems, each with the machine to itself (the other is stopped), each
on fresh data from its own batch_init (100,000 items, users and orders):

  locust  the course's stress test: USERS locust users (HttpUser, the course's class), each
          checking out a random order of 0..99999 once a second, for SECONDS, locust on this
          machine. req/s, p50/p95/p99, failures (4xx) and replies by class.
  first   saturation: wrk at 64 connections, first-time checkouts only (each request checks out
          a distinct unpaid order). committed checkouts/s = 2xx/s.
  idle    one client, sequential first-time checkouts: latency with no load.

Before the scenarios each system gets WARMUP seconds of wrk on order ids of its own
(90,000 on), not counted: both are measured as they run in steady state. The broker is a JVM
that starts by interpreting its code and compiles it as it serves (2026-11-29: sequential
checkouts on a fresh stack p50 12.7 and 10.7 ms, the same stack after 15 s of wrk 10.5, 9.9
and 10.1 ms); the template's Python processes need no such warm-up, and get the same load.

For each, the CPU time of every process of the system under test is read from /proc around the
run, giving CPU ms per request. Each round prints both systems' figures and their ratio; the
end prints the median over the rounds. After this project's last round the invariants are
checked over every order, user and item (the template keeps none, so it is not checked).

Usage: .venv/bin/python stress-test/compare.py --template DIR [--rounds 3]
           [--scenarios locust,first,idle] [--users 300] [--seconds 45] [--wrk-seconds 20]
           [--warmup 10]
DIR is a checkout of delftdata/wdm-project-template (outside this repo; nothing of it is
committed here); ../shared/bench/template.sh runs it on 127.0.0.1:8190. This project runs as
./run_local.sh starts it, in STATE_DIR [.run-bench], on its default ports: stop any other
stack first. --project DIR runs another checkout of this project instead (a worktree of an
older commit, for a before/after figure from the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cpu
from bench import ensure_wrk, run_wrk, verify
from init_orders import Sizes, init_all
from locust_run import run_locust

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE_SH = REPO.parent / "shared" / "bench" / "template.sh"


@dataclass
class Figures:
    """One scenario's figures for one system in one round."""

    rate: float  # req/s (locust), committed checkouts/s (first), checkouts/s (idle)
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    detail: str
    cpu_table: list[str] = field(default_factory=list)


class System:
    name: str
    urls: dict[str, str]

    def up(self) -> None: ...
    def down(self) -> None: ...


class Template(System):
    name = "template"

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        url = "http://127.0.0.1:8190"
        self.urls = {"ORDER_URL": url, "PAYMENT_URL": url, "STOCK_URL": url}

    def up(self) -> None:  # template.sh also runs the three batch_inits
        subprocess.run(["bash", str(TEMPLATE_SH), "up", str(self.checkout)], check=True)

    def down(self) -> None:
        subprocess.run(["bash", str(TEMPLATE_SH), "down", str(self.checkout)], check=True)


class Project(System):
    name = "project"

    def __init__(self, repo: Path, state_dir: Path) -> None:
        self.repo = repo
        self.env = {**os.environ, "STATE_DIR": str(state_dir)}
        url = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"
        self.urls = {"ORDER_URL": url, "PAYMENT_URL": url, "STOCK_URL": url}

    def up(self) -> None:
        subprocess.run(
            [str(self.repo / "run_local.sh"), "down", "--clean"], env=self.env, check=True
        )
        subprocess.run([str(self.repo / "run_local.sh"), "up"], env=self.env, check=True)
        asyncio.run(init_all(self.urls, Sizes(), quiet=True))

    def down(self) -> None:
        subprocess.run(
            [str(self.repo / "run_local.sh"), "down", "--clean"], env=self.env, check=True
        )


def measured(run: Callable[[], tuple[float, float, float, int, str]]) -> Figures:
    """Run a scenario between two /proc snapshots; it returns (rate, p50, p99, requests,
    detail)."""
    before, started = cpu.snapshot(), time.monotonic()
    rate, p50, p99, requests, detail = run()
    usage = cpu.usage(before, cpu.snapshot(), time.monotonic() - started)
    per_request = 1000 * usage.system_seconds() / max(requests, 1)
    return Figures(rate, p50, p99, per_request, detail, usage.table())


def scenario_locust(urls: dict[str, str], users: int, seconds: int) -> Figures:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as urls_file:
        json.dump(urls, urls_file)
        urls_file.flush()

        def run() -> tuple[float, float, float, int, str]:
            result = run_locust(Path(urls_file.name), users=users, spawn_rate=100, seconds=seconds)
            return result.rps, result.p50_ms, result.p99_ms, result.requests, result.summary()

        return measured(run)


def scenario_first(urls: dict[str, str], seconds: int, first_id: int) -> Figures:
    wrk = ensure_wrk()

    def run() -> tuple[float, float, float, int, str]:
        result = run_wrk(
            wrk, "first", urls["ORDER_URL"], duration=seconds, connections=64, threads=1,
            first_id=first_id, last_id=Sizes().orders,
        )  # fmt: skip
        ok = result.count(2)
        detail = (
            f"{ok / result.duration_s:.0f} committed/s, 2xx={ok} 4xx={result.count(4)} "
            f"5xx={result.count(5)} socket errors={result.socket_errors}"
        )
        lat = result.latency_us
        return ok / result.duration_s, lat["p50"] / 1000, lat["p99"] / 1000, ok, detail

    return measured(run)


WARMUP_FIRST_ID = 90_000
"""Where the warm-up's first-time checkouts start: past the ids idle and first take."""


def warm_up(urls: dict[str, str], seconds: int) -> str:
    """Load the system as ``first`` does, on ids of its own; the figures are not counted."""
    return f"{scenario_first(urls, seconds, WARMUP_FIRST_ID).detail} (not counted)"


def scenario_idle(urls: dict[str, str], count: int, first_id: int) -> Figures:
    async def checkouts() -> list[float]:
        took = []
        async with aiohttp.ClientSession() as session:
            for order_id in range(first_id, first_id + count):
                started = time.perf_counter()
                async with session.post(f"{urls['ORDER_URL']}/orders/checkout/{order_id}") as r:
                    await r.read()
                took.append(1000 * (time.perf_counter() - started))
        return took

    def run() -> tuple[float, float, float, int, str]:
        started = time.perf_counter()
        took = sorted(asyncio.run(checkouts()))
        rate = count / (time.perf_counter() - started)
        p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
        return rate, p50, p99, count, f"{count} sequential checkouts, p50 {p50:.1f} ms"

    return measured(run)


def ratio(project: float, template: float) -> float:
    return project / template if template else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", required=True, type=Path, help="template checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default="idle,first,locust", help="run in this order")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=45, help="locust run time")
    parser.add_argument("--wrk-seconds", type=int, default=20)
    parser.add_argument("--idle-checkouts", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10, help="seconds of wrk first (0: none)")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".run-bench")
    parser.add_argument(
        "--project",
        type=Path,
        default=REPO,
        help="the checkout of this project to run (another commit's, for a before/after)",
    )
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    project = Project(args.project.resolve(), args.state_dir.resolve())
    systems: list[System] = [Template(args.template.resolve()), project]
    results: dict[tuple[str, str], list[Figures]] = {}
    failures: list[str] = []
    stamp = time.strftime("%Y-%m-%d %H:%M")
    print(f"compare: {stamp} on {os.uname().nodename}, {os.cpu_count()} cores")
    for round_no in range(1, args.rounds + 1):
        # Alternate which system goes first, so neither always runs on a warmer machine.
        order = systems if round_no % 2 else systems[::-1]
        for system in order:
            print(f"=== round {round_no}: {system.name}", flush=True)
            system.up()
            try:
                if args.warmup:
                    print(f"  warm-up: {warm_up(system.urls, args.warmup)}", flush=True)
                # First-time ids: idle takes 0.., wrk 1000..; locust (last) picks at random.
                for name in scenarios:
                    if name == "locust":
                        figures = scenario_locust(system.urls, args.users, args.seconds)
                    elif name == "first":
                        figures = scenario_first(system.urls, args.wrk_seconds, 1000)
                    else:
                        figures = scenario_idle(system.urls, args.idle_checkouts, 0)
                    results.setdefault((system.name, name), []).append(figures)
                    cpu_ms = figures.cpu_ms_per_request
                    print(f"  {name}: {figures.detail}; CPU {cpu_ms:.2f} ms/request")
                    for line in figures.cpu_table:
                        print(f"    {line}")
                if system.name == "project" and round_no == args.rounds:
                    time.sleep(5)  # in-flight sagas finish
                    failures += verify(system.urls, Sizes(), [], "full", 64)
            finally:
                system.down()
        report_round(results, scenarios, round_no - 1)
    report_median(results, scenarios)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def report_round(
    results: dict[tuple[str, str], list[Figures]], scenarios: list[str], i: int
) -> None:
    for name in scenarios:
        p, t = results[("project", name)][i], results[("template", name)][i]
        print(
            f"round {i + 1} {name}: project {p.rate:.0f}/s p50 {p.p50_ms:.1f} p99 {p.p99_ms:.1f} "
            f"cpu {p.cpu_ms_per_request:.2f} ms | template {t.rate:.0f}/s p50 {t.p50_ms:.1f} "
            f"p99 {t.p99_ms:.1f} cpu {t.cpu_ms_per_request:.2f} ms | rate ratio "
            f"{ratio(p.rate, t.rate):.2f}"
        )


def report_median(results: dict[tuple[str, str], list[Figures]], scenarios: list[str]) -> None:
    print("=== medians over the rounds (project / template)")
    for name in scenarios:
        p, t = results[("project", name)], results[("template", name)]

        def med(rows: list[Figures], attr: str) -> float:
            return float(statistics.median(getattr(r, attr) for r in rows))

        ratios = [ratio(a.rate, b.rate) for a, b in zip(p, t, strict=True)]
        print(
            f"{name}: rate {med(p, 'rate'):.0f}/s vs {med(t, 'rate'):.0f}/s "
            f"(ratio per round {', '.join(f'{r:.2f}' for r in ratios)}; median "
            f"{statistics.median(ratios):.2f}); p50 {med(p, 'p50_ms'):.1f} vs "
            f"{med(t, 'p50_ms'):.1f} ms; p99 {med(p, 'p99_ms'):.1f} vs {med(t, 'p99_ms'):.1f} ms; "
            f"CPU {med(p, 'cpu_ms_per_request'):.2f} vs {med(t, 'cpu_ms_per_request'):.2f} "
            "ms/request"
        )


if __name__ == "__main__":
    sys.exit(main())

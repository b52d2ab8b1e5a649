"""The course's locust test, headless, as one call: users, duration, the stats it reports."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class LocustResult:
    requests: int
    failures: int  # 4xx: the only replies the course counts as failures
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    classes: dict[str, int]  # replies by class: 2xx, 4xx, 5xx, conn-error

    def summary(self) -> str:
        classes = " ".join(f"{k}={v}" for k, v in self.classes.items())
        return (
            f"{self.rps:.0f} req/s, p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, "
            f"p99 {self.p99_ms:.0f} ms, {self.failures} failures ({classes})"
        )


def run_locust(urls_file: Path, *, users: int, spawn_rate: int, seconds: int) -> LocustResult:
    """Run stress-test/locustfile.py headless against ORDER_URL of ``urls_file``."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "locust"
        command = [
            str(Path(sys.executable).with_name("locust")),
            "-f", str(HERE / "locustfile.py"),
            "--headless", "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s",
            "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        env = {**os.environ, "URLS_FILE": str(urls_file)}
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
        stats = prefix.with_name("locust_stats.csv")
        if not stats.exists():
            raise RuntimeError(
                f"locust wrote no stats (exit {done.returncode}): {done.stderr[-2000:]}"
            )
        with stats.open() as f:
            (total,) = [row for row in csv.DictReader(f) if row["Name"] == "Aggregated"]
        with prefix.with_name("locust_status_classes.csv").open() as f:
            classes = {row["class"]: int(row["count"]) for row in csv.DictReader(f)}
    return LocustResult(
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rps=float(total["Requests/s"]),
        p50_ms=float(total["50%"]),
        p95_ms=float(total["95%"]),
        p99_ms=float(total["99%"]),
        classes=classes,
    )

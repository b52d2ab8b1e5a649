"""CPU time per process over a run, read from /proc before and after (no sampling thread).

Processes are named by what they run (``redis-server :7001``, ``java (broker)``, ``order-0``,
``gunicorn order``, ``nginx``, ``locust``), so one run's table reads like the stack's process
list; the sum over the system under test (everything but the load generator and this script)
gives the headline figure: CPU seconds per request or per committed checkout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")
SYSTEM = (
    "redis-server",
    "java (broker)",
    "tansu (broker)",
    "hypercorn",
    "gunicorn",
    "nginx",
    "supervisord",
)
"""The processes of a system under test (this project's or the course template's); the load
generator, the benchmark and whatever else runs on the machine are left out of its sum."""
SHOWN = (*SYSTEM, "locust", "wrk")


@dataclass(frozen=True)
class Usage:
    """CPU seconds by process name between two snapshots."""

    seconds: dict[str, float]
    wall: float

    def system_seconds(self) -> float:
        """CPU seconds of the system under test."""
        return sum(s for name, s in self.seconds.items() if name.startswith(SYSTEM))

    def table(self, top: int = 12) -> list[str]:
        shown = [(n, s) for n, s in self.seconds.items() if n.startswith(SHOWN)]
        rows = sorted(shown, key=lambda kv: -kv[1])[:top]
        return [f"  {100 * s / self.wall:6.1f}% of a core  {name}" for name, s in rows if s > 0]


def _name(cmdline: list[str], comm: str) -> str:
    text = " ".join(cmdline)
    if comm == "redis-server" or text.startswith("/usr/bin/redis-server"):
        port = re.search(r":(\d+)", text)
        return f"redis-server :{port.group(1) if port else '?'}"
    if "kafka.Kafka" in text:
        return "java (broker)"
    if "tansu" in text:  # the broker of this project before Apache Kafka (before/after runs)
        return "tansu (broker)"
    if "hypercorn" in text:
        worker = re.search(r"--bind \S+:(\d+)", text)
        app = re.search(r"(\w+)\.app:", text)
        return f"hypercorn {app.group(1) if app else '?'} :{worker.group(1) if worker else '?'}"
    if "gunicorn" in text:
        port = re.search(r"-b \S+:(\d+)", text)
        return f"gunicorn :{port.group(1) if port else '?'}"
    if "locust" in text:
        return "locust"
    if comm.startswith("wrk"):
        return "wrk"
    return comm


def snapshot(root: int | None = None) -> dict[int, tuple[str, int]]:
    """pid -> (name, utime + stime in ticks) of every process, or only of ``root`` and its
    descendants (one stack's supervisord, when other stacks share the machine)."""
    found: dict[int, tuple[str, int]] = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry)] = (_name(cmdline, comm), int(fields[11]) + int(fields[12]))
        parents[int(entry)] = int(fields[1])
    if root is None:
        return found
    return {pid: entry for pid, entry in found.items() if _descends(pid, root, parents)}


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = parents.get(pid, 0)
    return pid == root


def usage(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], wall: float
) -> Usage:
    """CPU seconds per process name between two snapshots (a process that started in between
    counts from zero; one that ended in between is lost, as /proc no longer has it)."""
    seconds: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        old_name, old_ticks = before.get(pid, (name, 0))
        start = old_ticks if old_name == name else 0  # a reused pid counts from zero
        used = (ticks - start) / TICKS
        if used > 0:
            seconds[name] = seconds.get(name, 0.0) + used
    return Usage(seconds, wall)

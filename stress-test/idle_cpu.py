#!/usr/bin/env python3
"""CPU the running local stack burns doing nothing: every process of the system (Redis nodes,
the broker, the workers, nginx, supervisord) over SECONDS, after SETTLE seconds of quiet.

Usage: .venv/bin/python stress-test/idle_cpu.py [--settle 10] [--seconds 20] [--state-dir DIR]
Run it against a stack that nothing else loads (`./run_local.sh`, then wait for it to be up).
Only the processes of the stack in DIR [$STATE_DIR or <repo>/.run] are counted (its
supervisord and everything under it), so other stacks on the machine do not count.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("STATE_DIR", Path(__file__).resolve().parents[1] / ".run")),
    )
    args = parser.parse_args()
    root = int((args.state_dir / "supervisord.pid").read_text())
    time.sleep(args.settle)
    before, started = cpu.snapshot(root), time.monotonic()
    time.sleep(args.seconds)
    usage = cpu.usage(before, cpu.snapshot(root), time.monotonic() - started)
    for line in usage.table(top=40):
        print(line)
    share = 100 * usage.system_seconds() / usage.wall
    day = time.strftime("%Y-%m-%d")
    print(f"idle stack: {share:.1f}% of one core over {usage.wall:.0f} s ({day})")


if __name__ == "__main__":
    main()

"""supervisord as run_local.sh starts it, restarting a process that died within about 0.2 s.

supervisord's loop waits up to 1 s for output from its processes, and it takes two turns of
the loop to restart one that died (the first reaps it, the next spawns it again): a killed
broker or worker was started again 6 ms to 0.8 s after it died, depending on whether other
processes happened to write meanwhile. Here no wait is longer than TICK_S. Each turn costs
supervisord well under a millisecond with some 30 processes, so an idle stack pays little."""

import sys

from supervisor import poller, supervisord

TICK_S = 0.1

_poll = poller.Poller.poll


def _poll_at_most_a_tick(self: poller.Poller, timeout: float) -> tuple[list[int], list[int]]:
    return _poll(self, min(timeout, TICK_S))


poller.Poller.poll = _poll_at_most_a_tick

if __name__ == "__main__":
    sys.exit(supervisord.main())

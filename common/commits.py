"""A group member's offsets on their way to the broker: what its consumer loop has handled and
not yet committed, sent one commit at a time and at most every COMMIT_INTERVAL_S, and the clock
that makes a consumer whose commits stopped going through anew (``ConsumerStuck``). A commit
that does not happen only means a redelivery, which the handlers find done."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiokafka import TopicPartition

Offsets = dict[TopicPartition, int]

COMMIT_INTERVAL_S = 1.0
"""Offsets are committed at most this often: each commit is a broker round trip, and one
missed only means a redelivery of what the handlers have already done (which they ignore).
Once a second instead of every 200 ms cost the stack about 5 % less CPU per checkout under 150
locust users (2026-11-29, alternating: 8.6 and 8.2 ms against 9.1 and 8.5 ms)."""
STUCK_AFTER_S = 30.0
"""A group member whose commits have been owed this long with none going through, or whose
fetches have failed this long, makes its consumer anew (a new one rejoins under the same static
member id and gets its partitions back).
Seen once in a review under combined faults (2026-12-01): after broker kills, a stock worker's
aiokafka consumer went on fetching and handling its partitions while its group coordination had
stopped, with no heartbeat and no commit for 13 minutes; when stock scaled out, the new members
re-read all of it, and checkouts waited about 45 s."""
BLOCKED_S = 5.0
"""Longer than this between two of the loop's commit points, it was held up (its batch waited
for an outage to end); that time does not count towards STUCK_AFTER_S. Nor does time in which
no fetch brought a record: a broker that does not answer (frozen, cut off) holds the commit in
flight too, and a consumer made anew would only wait for it the same way (a review saw that
in broker freezes of 32-37 s, 2026-12-01). A stuck coordination costs something only while
records are read and not committed, and that time counts."""


class ConsumerStuck(Exception):
    """None of the consumer's commits has gone through, or every fetch has failed, for
    STUCK_AFTER_S: it is made anew."""


class Commits:
    """The offsets one group member owes. ``handled`` after each batch whose effects are
    durable; ``commit_point`` where the loop may commit (``due``, or its partitions went quiet);
    ``close`` when it leaves. Offsets are kept per rebalance (``epoch`` counts them): what was
    read before the latest rebalance is never committed, as the partitions may be another
    member's now, and a log that came back empty would be skipped that far."""

    def __init__(
        self,
        name: str,
        commit: Callable[[Offsets], Coroutine[Any, Any, bool]],
        epoch: Callable[[], int],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._name = name
        self._commit = commit  # whether the offsets were committed
        self._epoch = epoch
        self._clock = clock or asyncio.get_running_loop().time
        self._owed: Offsets = {}
        self._owed_in = epoch()
        self._sending: asyncio.Task[bool] | None = None
        self._sent: Offsets = {}  # the offsets of the commit in flight
        self._sent_in = self._owed_in
        self._sent_at = -math.inf
        self._owed_since: float | None = None  # offsets owed, and no commit went through since
        self._point_at = self._clock()
        self._served = False  # a fetch brought records since the last commit point

    def handled(self, offsets: Iterable[tuple[TopicPartition, int]], fetched_in: int) -> None:
        """A batch read in rebalance ``fetched_in`` is done: the next offset of each of its
        partitions is owed."""
        if fetched_in != self._owed_in:
            self._owed, self._owed_in = {}, fetched_in
        self._owed.update(offsets)
        self._served = True

    def due(self) -> bool:
        """Whether COMMIT_INTERVAL_S has passed since the last commit began."""
        return self._clock() - self._sent_at >= COMMIT_INTERVAL_S

    def commit_point(self) -> None:
        """Reads the finished commit, drops what a rebalance took, and begins a commit of what
        is owed unless one is in flight. Raises ConsumerStuck once offsets have been owed for
        STUCK_AFTER_S and no commit went through (time the loop was held up, over BLOCKED_S
        between two commit points, and time in which no fetch brought a record, do not
        count)."""
        if self._sending is not None and self._sending.done():
            self._settle(self._sending.result())
        if self._owed_in != self._epoch():
            self._owed = {}
        if not self._owed and self._sending is None:
            self._owed_since = None  # nothing owed
            return
        now = self._clock()
        since_point, self._point_at = now - self._point_at, now
        served, self._served = self._served, False
        if self._owed_since is None:
            self._owed_since = now
        elif since_point > BLOCKED_S or not served:
            # The loop was held up (a batch waiting out a broker or Redis outage), or the
            # broker brought nothing: the commits had no chance meanwhile, or nothing was read
            # that a stuck coordination would leave uncommitted, so that time does not count.
            self._owed_since += since_point
        elif now - self._owed_since > STUCK_AFTER_S:
            if self._sending is not None:
                self._sending.cancel()
            raise ConsumerStuck(
                f"{self._name}: offsets owed for {now - self._owed_since:.0f}s and no commit "
                "went through; making the consumer anew"
            )
        if self._sending is not None or not self._owed:
            return  # one commit at a time
        self._sending = asyncio.create_task(self._commit(self._owed))
        self._sent, self._sent_in = self._owed, self._owed_in
        self._owed, self._sent_at = {}, now

    async def close(self) -> None:
        """Leaving: the commit in flight ends, and what is still owed and still this member's
        is committed, before the group hears it leave."""
        if self._sending is not None:
            self._settle(await self._sending)
        if self._owed and self._owed_in == self._epoch():
            await self._commit(self._owed)
            self._owed = {}

    def _settle(self, committed: bool) -> None:
        """The commit in flight ended; if it failed, its offsets are owed again (under what
        came since) while they are of the same rebalance."""
        if committed:
            self._owed_since = None
        elif self._sent_in == self._owed_in:
            self._owed = {**self._sent, **self._owed}
        self._sending = None

"""A seeded simulation of the whole checkout saga in one process.

The production orchestrator, checkout edge, sweeper, consumer loop and participant handlers run
on ``FakeStore``s (three Redis Clusters that lose unreplicated writes on failover) and a
``FakeBus`` (drops, duplicates, held-back messages, an empty restart, records too large for
Kafka), under a ``VirtualTimeLoop``. A seeded ``random.Random`` decides every step: which parked
call proceeds, when time passes, which process crashes where, which master fails over, which
replica is killed, comes back and resyncs (a failover while it resyncs promotes it without what
it missed), when the three services' ``batch_init`` reset every entity under the live sagas,
when the whole world stalls for half a minute (checkouts queued for a turn run out of time),
when an order worker freezes (SIGSTOP) past the gateway's timeout, which sends its checkouts
again to another worker (``sim_gateway``: the client gets the last try's answer; a resumed
worker reads the ones it holds only then).
Every checkout answer is checked the moment it is given (``sim_workload``); after a fault phase
the faults stop and the world runs until it is quiescent; ``sim_check`` then checks the
invariants of DESIGN.md. ``run_seed(seed)`` returns a ``Report`` whose ``trace`` replays the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.ledger import LUA_DIR, Ledger
from common.messages import PAYMENT, PAYMENT_PROCESSING, STOCK, STOCK_PROCESSING
from common.settings import load_settings
from common.terms import ITEMS, USERS
from test.unit.fake_bus import BusFaults, FakeBus
from test.unit.fake_redis import DOWN, IN_SYNC, MASTERS, RESYNCING, FakeRedis
from test.unit.fake_store import FakeStore
from test.unit.sim_gateway import Gateway
from test.unit.sim_patch import patched
from test.unit.sim_procs import OrderWorker, Participants, consume
from test.unit.sim_sched import Actor, Scheduler, VirtualTimeLoop, current_actor
from test.unit.sim_workload import Workload

START_MS = 1_000_000
ORDER_LUA = Path(__file__).resolve().parents[2] / "order" / "lua"
SERVICES = ("order", "stock", "payment")
GROUPS: dict[str, tuple[str, ...]] = {
    "stock": (STOCK,),
    "payment": (PAYMENT,),
    "order": (STOCK_PROCESSING, PAYMENT_PROCESSING),
}


@dataclass(frozen=True)
class Knobs:
    """Settings of the services under simulation, and how hard the faults hit."""

    step_timeout_ms: int = 2000
    deadline_ms: int = 10_000
    checkout_timeout_ms: int = 20_000
    checkout_answer_ms: int = 55_000
    checkout_concurrency: int = 2
    """Few turns per order worker, so that checkouts queue for them (and a turn may not come)."""
    sweep_interval_ms: int = 500
    index_shards: int = 4
    partitions: int = 4
    order_workers: int = 2
    fault_steps: int = 220
    heal_steps: int = 3000
    heal_ms: int = 180_000
    bus: BusFaults = BusFaults(drop=0.04, duplicate=0.04, hold=0.05)
    crash: float = 0.12
    failover: float = 0.12
    broker_restart: float = 0.01
    rebalance: float = 0.06
    replica_loss: float = 0.08
    """A master's replica is killed; it comes back (``replica_back``) and resyncs."""
    replica_back: float = 0.6
    failover_resyncing: float = 0.8
    """A master whose replica resyncs dies, and that replica is promoted."""
    reset: float = 0.03
    """batch_init over live sagas: the three services at one instant, or the orders alone."""
    orders_only_reset: float = 0.4
    max_resets: int = 2
    stall: float = 0.03
    """Nothing moves for half a minute (a broker or network outage): what waits on a timer,
    a checkout queued for its turn say, runs out of time."""
    max_stalls: int = 1
    freeze: float = 0.03
    """An order worker freezes (SIGSTOP, a paused VM) for ``freeze_ms``, past the gateway's
    timeout: the gateway sends the checkouts it holds again to another worker."""
    max_freezes: int = 1
    freeze_ms: tuple[int, int] = (45_000, 100_000)
    burst: float = 0.6
    """Probability that the workload sends a wave of checkouts to one worker at once."""
    oversized: float = 0.15
    """Probability that the workload holds an order too big for one Kafka record."""
    park: float = 0.7
    """Probability that a store or bus call parks at its gate (else it runs at once)."""
    park_calls: tuple[tuple[str, float], ...] = (
        ("sweep_lease", 0.35),
        ("bulk", 0.0),
        ("replicate_all", 0.0),
    )
    """Other probabilities for some calls (the sweeper's routine reads need fewer steps; a
    reset's writes happen at one instant)."""
    spare_prefixes: tuple[str, ...] = ()
    """Keys whose unreplicated writes a failover keeps (to look past a known bug)."""
    first_node_wins: bool = True
    """Track the first master that took a key's write in a block (to look past a known bug)."""
    shield_start: bool = False
    """Never crash an order process between a checkout's saga_begin and the index
    re-registration after it (to look past a known bug)."""
    durable_reads: bool = False
    """Reads of the saga log are replicated before they are acted on (to look past known
    bugs: FakeCluster.durable_reads)."""
    dropped_pipeline_is_none: bool = True
    """A failover during the one-round-trip start is no exception (to look past a known bug:
    FakeStore.dropped_pipeline_is_none)."""


@dataclass
class Report:
    seed: int
    violations: list[str]
    trace: list[str]
    stats: dict[str, int] = field(default_factory=dict)

    def explain(self, tail: int = 120) -> str:
        lines = [f"SIM_SEED={self.seed}: {len(self.violations)} violation(s)"]
        lines += [f"  ! {v}" for v in self.violations]
        lines.append(f"stats: {self.stats}")
        lines.append(f"last {min(tail, len(self.trace))} of {len(self.trace)} events:")
        lines += [f"  {event}" for event in self.trace[-tail:]]
        return "\n".join(lines)


class World:
    """Everything one seed runs: stores, bus, processes, the workload and the fault dice."""

    def __init__(self, seed: int, knobs: Knobs) -> None:
        self.seed = seed
        self.knobs = knobs
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop(START_MS)
        self.sched = Scheduler(self.loop, self.rng)
        self.trace: list[str] = []
        self.errors: list[str] = []
        self.stats: dict[str, int] = {}
        self.faulty = False
        self.park_calls = dict(knobs.park_calls)
        self.frozen: set[str] = set()
        """The order workers frozen now (``OrderWorker.freeze``)."""
        self.ids = random.Random(f"ids-{seed}")
        """The saga code's randomness (new saga ids, index scores), shared by every worker."""
        self.settings = dataclasses.replace(
            load_settings({}),
            saga_step_timeout_ms=knobs.step_timeout_ms,
            saga_deadline_ms=knobs.deadline_ms,
            checkout_timeout_ms=knobs.checkout_timeout_ms,
            checkout_answer_ms=knobs.checkout_answer_ms,
            checkout_concurrency=knobs.checkout_concurrency,
        )

        def now() -> int:
            return self.loop.now_ms

        self.redis = {s: FakeRedis(now) for s in SERVICES}
        self.stores = {
            s: FakeStore(
                self.redis[s],
                self.gate,
                first_node_wins=knobs.first_node_wins,
                observe=self.observe,
            )
            for s in SERVICES
        }
        for store in self.stores.values():
            store.load_scripts(LUA_DIR)
            store.cluster.durable_reads = knobs.durable_reads
            store.dropped_pipeline_is_none = knobs.dropped_pipeline_is_none
        self.stores["order"].load_scripts(ORDER_LUA)
        self.bus = FakeBus(
            self.gate, partitions=knobs.partitions, rng=self.rng, note=self.note, groups=GROUPS
        )
        self.items = Ledger(self.stores["stock"], ITEMS)
        self.users = Ledger(self.stores["payment"], USERS)
        self.participants = Participants(self)
        self.workers = {
            f"order-{i}": OrderWorker(self, f"order-{i}") for i in range(knobs.order_workers)
        }
        self.processes: dict[str, list[str]] = {
            "stock": ["stock-0"],
            "payment": ["payment-0"],
            "order": list(self.workers),
        }
        self.inflight: dict[tuple[str, str, int], Actor] = {}
        self.gateway = Gateway(self)
        self.workload = Workload(self)
        self._started: dict[str, int] = {}
        self._published_seen = 0

    # --- plumbing -------------------------------------------------------------------------------
    def note(self, event: str) -> None:
        self.trace.append(f"{self.loop.now_ms - START_MS:>7} {event}")

    def started_of(self, saga_id: str) -> int:
        """When ``saga_id`` began, as its messages say (0 if none was sent)."""
        for _, message in self.bus.published[self._published_seen :]:
            self._started.setdefault(message.saga_id, message.started)
        self._published_seen = len(self.bus.published)
        return self._started.get(saga_id, 0)

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def error(self, what: str) -> None:
        self.note(f"ERROR {what}")
        self.errors.append(what)

    def observe(self, call: str, result: Any) -> None:
        """Every script's result goes to the trace; a saga start opens a checkout's start
        window (see ``Knobs.shield_start``)."""
        self.note(f"    {call[:120]} -> {repr(result)[:300]}")
        actor = current_actor()
        if call.startswith("saga_begin") and result[0] == b"STARTED":
            self.workload.began.setdefault(result[1].decode(), len(self.trace))
            if actor is not None:
                actor.notes["starting"] = True
                actor.notes.setdefault("began", []).append(result[1].decode())

    def running_workers(self) -> list[str]:
        """The order workers not frozen (there is always one: one freezes at a time)."""
        return [name for name in self.workers if name not in self.frozen]

    async def gate(self, label: str) -> None:
        actor = current_actor()
        if self.frozen and actor is not None and actor.process in self.frozen:
            await self.workers[actor.process].awake()  # sent once it resumes
            if actor.crashed:
                raise asyncio.CancelledError
        if actor is not None and "starting" in actor.notes and not label.startswith("zadd"):
            del actor.notes["starting"]  # past the re-registration that follows a slow start
        park = self.park_calls.get(label.partition(" ")[0], self.knobs.park)
        if self.rng.random() < park:
            await self.sched.gate(label)
        else:
            self.note(f"{actor.name if actor else '?'}: {label} (at once)")

    # --- the run ----------------------------------------------------------------------------------
    async def run(self) -> None:
        self.workload.setup()
        for worker in self.workers.values():
            worker.boot()
        self.set_faults(True)
        for _ in range(self.knobs.fault_steps):
            await self.step()
        self.set_faults(False)
        healed_at, steps = self.loop.now_ms, 0
        while not self.quiescent():
            steps += 1
            if steps > self.knobs.heal_steps or self.loop.now_ms - healed_at > self.knobs.heal_ms:
                self.error(f"not quiescent {steps} steps, {self.loop.now_ms - healed_at} ms after")
                break
            await self.step()
        self.stats["heal_steps"] = steps
        self.stats["virtual_ms"] = self.loop.now_ms - START_MS
        for worker in self.workers.values():
            self.count("sweeper resends", worker.sweeper.resends)
            self.count("sweeper aborts", worker.sweeper.aborts)
        await self.sched.shutdown()

    def set_faults(self, on: bool) -> None:
        self.faulty = on
        self.bus.faults = self.knobs.bus if on else BusFaults()
        self.note("faults on" if on else "faults off: healing")
        if not on:  # every replica back and in sync
            for service, master in self.replicas(DOWN) + self.replicas(RESYNCING):
                self.redis[service].resynced(master)

    def quiescent(self) -> bool:
        return (
            not self.workload.todo
            and not self.sched.busy_actors()
            and self.bus.drained(dict(GROUPS))
            and self.workload.all_terminal()
        )

    async def step(self) -> None:
        await self.sched.settle()
        options: list[tuple[float, Callable[[], None]]] = []
        if self.sched.gates:
            options.append((8.0, self.release_gate))
        batchable = [
            (g, t, p)
            for g, topics in GROUPS.items()
            for t, p in self.bus.backlog(g, topics)
            if (g, t, p) not in self.inflight
        ]
        if batchable:
            options.append((3.0, lambda: self.start_batch(*self.rng.choice(batchable))))
        unread = [w for w in self.workers.values() if not w.frozen and w.unread()]
        if unread:
            options.append((1.0, lambda: self.rng.choice(unread).read_outcomes()))
        if self.workload.todo:
            options.append((1.5, self.workload.start_next))
        if self.bus.held:
            options.append((0.4 if self.faulty else 3.0, self.release_held))
        if self.faulty:
            options.append((1.0, self.tick))
            if self.stats.get("stalls", 0) < self.knobs.max_stalls:
                options.append((self.knobs.stall, self.stall))
            # One order worker always runs: freezes come one after another (max_freezes > 1).
            more = self.stats.get("freezes", 0) < self.knobs.max_freezes
            if more and len(self.frozen) < len(self.workers) - 1:
                options.append((self.knobs.freeze, self.freeze))
            if self.frozen and self.only_frozen_busy():
                options.append((1.0, self.frozen_tick))
            options.append((self.knobs.crash, self.crash))
            options.append((self.knobs.failover, self.failover))
            options.append((self.knobs.broker_restart, self.broker_restart))
            options.append((self.knobs.replica_loss, self.replica_down))
            away = self.replicas(DOWN) + self.replicas(RESYNCING)
            if away:
                options.append((self.knobs.replica_back, self.replica_back))
                if self.replicas(RESYNCING):
                    options.append((self.knobs.failover_resyncing, self.failover_while_resyncing))
            elif self.stats.get("resets", 0) < self.knobs.max_resets:  # (its barrier needs them)
                options.append((self.knobs.reset, self.workload.reset))
            if self.inflight:
                options.append((self.knobs.rebalance, self.rebalance))
        elif not options:
            frozen_only = self.frozen and self.only_frozen_busy()
            options.append((1.0, self.frozen_tick if frozen_only else self.tick))
        weights = [w for w, _ in options]
        self.rng.choices(options, weights)[0][1]()

    # --- actions --------------------------------------------------------------------------------
    def release_gate(self) -> None:
        gate = self.rng.choice(self.sched.gates)
        self.note(f"{gate.actor.name if gate.actor else '?'}: {gate.label}")
        self.sched.release(gate)

    def tick(self) -> None:
        if self.faulty:
            ms = self.rng.choice((5, 50, 200, 500, 1000, 2500))
        else:
            due = self.loop.next_timer_ms()
            ms = max(1, due - self.loop.now_ms) if due is not None else 1000
        self.loop.advance(ms)

    def stall(self) -> None:
        ms = self.rng.randint(21_000, 30_000)
        self.count("stalls")
        self.note(f"STALL: nothing moves for {ms} ms")
        self.loop.advance(ms)

    def freeze(self) -> None:
        """SIGSTOP an order worker, one holding checkouts if any does. Its consumer's partitions
        move to the others (its session times out within seconds): its batches are zombies."""
        held = {a.process for a in self.sched.actors if a.alive and " checkout " in a.name}
        running = self.running_workers()
        name = self.rng.choice(sorted(held & set(running)) or running)
        ms = self.rng.randint(*self.knobs.freeze_ms)
        self.count("freezes")
        self.note(f"FREEZE {name} for {ms} ms")
        self.workers[name].freeze(ms)
        for key, actor in list(self.inflight.items()):
            if actor.process == name:
                actor.notes["zombie"] = True
                del self.inflight[key]

    def only_frozen_busy(self) -> bool:
        """Whether only frozen workers have requests or batches in hand, and no call is on its
        way (one a worker sent before it froze goes on: it is not held up for a minute)."""
        if self.sched.gates:
            return False
        return all(a.process in self.frozen for a in self.sched.busy_actors())

    def frozen_tick(self) -> None:
        """Time passes while the rest of the world has nothing in hand: on to the next time
        the gateway gives up on a try, or a worker resumes."""
        whens = [self.workers[name].resume_ms for name in self.frozen]
        deadline = self.gateway.next_deadline_ms()
        if deadline is not None:
            whens.append(deadline)
        self.loop.advance(max(1, min(whens) - self.loop.now_ms))

    def release_held(self) -> None:
        self.bus.release_held(self.rng.randrange(len(self.bus.held)))

    def start_batch(self, group: str, topic: str, partition: int) -> None:
        start = self.bus.position(group, topic, partition)
        end = min(len(self.bus.logs[(topic, partition)]), start + self.rng.randint(1, 4))
        processes = self.processes[group]
        if group == "order" and self.frozen:
            processes = self.running_workers()
        process = self.rng.choice(processes)
        if group == "order":
            loop = self.workers[process].consumer
        else:
            loop = self.participants.consumers[group]
        records = self.bus.records(topic, partition, start, end)
        key = (group, topic, partition)
        name = f"{process} {topic}/{partition}@{start}:{end}"
        coro = consume(self, loop, key, records, end, self.bus.epoch)
        self.inflight[key] = self.sched.spawn(name, process, coro, self.batch_done)

    def batch_done(self, actor: Actor, task: asyncio.Task[Any]) -> None:
        for key, running in list(self.inflight.items()):
            if running is actor:
                del self.inflight[key]
        if task.cancelled():
            self.note(f"{actor.name}: crashed")
        elif task.exception() is not None:
            self.error(f"{actor.name}: {task.exception()!r}")

    def crash(self) -> None:
        process = self.rng.choice([p for ps in self.processes.values() for p in ps])
        if self.knobs.shield_start and any(
            "starting" in a.notes for a in self.sched.actors if a.process == process and a.alive
        ):
            self.note(f"crash of {process} skipped: a checkout is inside its start window")
            return
        victims = self.sched.crash(process)
        self.count("crashes")
        self.note(f"CRASH {process} ({', '.join(a.name for a in victims)})")
        if process in self.workers:
            self.workers[process].boot()

    def replicas(self, state: str) -> list[tuple[str, int]]:
        """(service, master) of every replica in ``state``."""
        return [
            (service, m)
            for service, redis in self.redis.items()
            if state in redis.replica
            for m in range(MASTERS)
            if redis.replica[m] == state
        ]

    def replica_down(self) -> None:
        service, master = self.rng.choice(SERVICES), self.rng.randrange(MASTERS)
        if self.redis[service].replica[master] == IN_SYNC:
            self.redis[service].replica_down(master)
            self.count("replicas lost")
            self.note(f"REPLICA of {service} master {master} killed")

    def replica_back(self) -> None:
        service, master = self.rng.choice(self.replicas(DOWN) + self.replicas(RESYNCING))
        if self.redis[service].replica[master] == DOWN:
            self.redis[service].replica_back(master)
            self.note(f"REPLICA of {service} master {master} back, resyncing")
        else:
            self.redis[service].resynced(master)
            self.note(f"REPLICA of {service} master {master} in sync")

    def failover_while_resyncing(self) -> None:
        """The hole of issue 16: a master dies while its restarted replica resyncs, and that
        replica is promoted (``cluster-replica-validity-factor 0``)."""
        self.failover(*self.rng.choice(self.replicas(RESYNCING)))

    def failover(self, service: str = "", master: int = -1) -> None:
        if not service:
            service, master = self.rng.choice(SERVICES), self.rng.randrange(MASTERS)
        if self.redis[service].replica[master] == DOWN:
            return  # no replica to promote: the master only restarts (AOF keeps its writes)
        if self.redis[service].replica[master] == RESYNCING:
            self.count("failovers while resyncing")
        spared = self.knobs.spare_prefixes
        lost = self.redis[service].failover(master, lambda key: key.startswith(spared))
        self.count("failovers")
        self.note(f"FAILOVER {service} master {master}: {len(lost)} writes lost {lost[:4]}")

    def broker_restart(self) -> None:
        self.bus.restart()
        self.count("broker_restarts")
        for actor in self.inflight.values():
            actor.notes["zombie"] = True
        self.inflight.clear()
        for worker in self.workers.values():
            worker.outcome_positions = dict.fromkeys(worker.outcome_positions, 0)

    def rebalance(self) -> None:
        key = self.rng.choice(list(self.inflight))
        actor = self.inflight.pop(key)
        actor.notes["zombie"] = True
        self.note(f"REBALANCE {key}: {actor.name} keeps running as a zombie")


def run_seed(seed: int, knobs: Knobs | None = None) -> Report:
    """Run one seed to quiescence and check it; never raises for a failing seed."""
    from test.unit.sim_check import check

    world = World(seed, knobs or Knobs())
    try:
        with patched(world):
            world.loop.run_until_complete(world.run())
    except Exception as exc:  # a crash of the harness itself is reported like a violation
        world.error(f"simulation raised {exc!r}")
    finally:
        _close(world.loop)
    violations = world.errors + check(world)
    world.stats.update(world.workload.stats())
    return Report(seed, violations, world.trace, world.stats)


def _close(loop: VirtualTimeLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()

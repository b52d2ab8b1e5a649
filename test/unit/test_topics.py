"""The topic maker creates what is missing and says when an existing topic's partition count is
not the one the settings ask for (a broker's log outlives a change of TOPIC_PARTITIONS). The
topics consumer groups share get TOPIC_PARTITIONS; ORDER_STATUS_UPDATE, read whole by every order
worker, one."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from common import topics as topics_module
from common.bus import TOPIC_CHECK_S, TOPIC_RECHECK_S, topics_due
from common.messages import ALL_TOPICS, ORDER_STATUS_UPDATE, STOCK
from common.settings import load_settings
from common.topics import Topics


class FakeAdmin:
    """The admin calls Topics makes, over a dict of topic -> partition count."""

    def __init__(self, partitions: dict[str, int], *, describe_fails: bool = False) -> None:
        self.partitions = partitions
        self.describe_fails = describe_fails
        self.described: list[list[str]] = []

    def __call__(self, **_: Any) -> FakeAdmin:  # stands in for the client's constructor
        return self

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.partitions)

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        self.described.append(topics)
        if self.describe_fails:
            raise KafkaConnectionError("broker away")
        return [
            {"topic": t, "partitions": [{"partition": p} for p in range(self.partitions[t])]}
            for t in topics
        ]

    async def create_topics(self, new: list[Any]) -> Any:
        for topic in new:
            self.partitions[topic.name] = topic.num_partitions
        return type("Response", (), {"topic_errors": [(t.name, 0) for t in new]})()


async def made(monkeypatch: pytest.MonkeyPatch, admin: FakeAdmin) -> Topics:
    monkeypatch.setattr(topics_module, "AIOKafkaAdminClient", admin)
    topics = Topics(load_settings({"TOPIC_PARTITIONS": "16"}))
    await topics.start()
    return topics


# What each topic is made with under TOPIC_PARTITIONS=16.
MADE = {**{t: 16 for t in ALL_TOPICS}, ORDER_STATUS_UPDATE: 1}


async def test_a_topic_with_another_partition_count_is_named_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    admin = FakeAdmin({**MADE, STOCK: 6})
    topics = await made(monkeypatch, admin)
    assert await topics.ensure() == []
    assert await topics.ensure() == []  # the topic keeper's later rounds do not look again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"topic {STOCK} has 6 partitions")
    assert admin.described == [list(ALL_TOPICS)]


async def test_missing_topics_are_made_with_the_settings_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    admin = FakeAdmin({STOCK: 16})
    topics = await made(monkeypatch, admin)
    assert sorted(await topics.ensure()) == sorted(t for t in ALL_TOPICS if t != STOCK)
    assert admin.partitions == MADE
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_a_failed_count_is_logged_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    admin = FakeAdmin({t: 6 for t in ALL_TOPICS}, describe_fails=True)
    topics = await made(monkeypatch, admin)
    assert await topics.ensure() == []  # the check informs; it does not stop the start
    admin.describe_fails = False
    await topics.ensure()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0].startswith("could not count the topics' partitions")
    assert len(warnings) == 1 + len(ALL_TOPICS)


async def test_a_broadcast_topic_made_with_the_group_count_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker whose log holds ORDER_STATUS_UPDATE from before it had one partition keeps its
    16 (the listeners read them all); the start says so."""
    admin = FakeAdmin({t: 16 for t in ALL_TOPICS})
    topics = await made(monkeypatch, admin)
    assert await topics.ensure() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"topic {ORDER_STATUS_UPDATE} has 16 partitions, not 1")
    assert "workers" not in warnings[0]  # no group shares it: its count limits no one


def test_the_keeper_looks_often_only_while_sends_wait_for_the_broker() -> None:
    """Every TOPIC_CHECK_S while the broker acknowledges; every TOPIC_RECHECK_S while a send
    waits longer than that (a broker away, or back empty and waiting for its topics)."""
    assert not topics_due(TOPIC_RECHECK_S, 0.0)
    assert not topics_due(TOPIC_CHECK_S - 0.01, TOPIC_RECHECK_S - 0.01)
    assert topics_due(TOPIC_CHECK_S, 0.0)
    assert topics_due(TOPIC_RECHECK_S, TOPIC_RECHECK_S)
    assert TOPIC_RECHECK_S < TOPIC_CHECK_S

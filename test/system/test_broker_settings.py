"""The stack's broker takes env/kafka/broker.env as the apache/kafka image does (compose and k8s
hand that file to the image): each KAFKA_* setting becomes a property of its server.properties,
named as the image names it, and the JVM's options go to java, not into the properties."""

from __future__ import annotations

from pathlib import Path

from test.conftest import Stack
from test.deploy.environments import REPO, read_env_file

JVM_SETTINGS = ("KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS")


def property_name(setting: str) -> str:
    """The image's renaming: KAFKA_ off, lower case, "___" -> "-", "__" -> "_", "_" -> "."."""
    name = setting.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def test_the_broker_runs_with_every_shared_setting(stack: Stack) -> None:
    shared = read_env_file(REPO / "env" / "kafka" / "broker.env")
    properties_file = Path(stack.env()["STATE_DIR"]) / "broker" / "server.properties"
    lines = properties_file.read_text(encoding="utf-8").splitlines()
    properties = dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    for setting, value in shared.items():
        if setting.startswith("KAFKA_") and setting not in JVM_SETTINGS:
            assert properties.get(property_name(setting)) == value, setting
    assert not {"heap.opts", "jvm.performance.opts"} & set(properties)

    command = Path(f"/proc/{stack.pid('broker')}/cmdline").read_bytes().split(b"\0")
    options = [arg.decode() for arg in command]
    for setting in JVM_SETTINGS:
        for option in shared[setting].split():
            assert option in options, (setting, option)

"""The fixtures of the deploy tests: docker-compose.yml and k8s/, loaded once per module.

test/deploy/validate.sh runs these tests with --noconftest (they need none of the stack's
fixtures, nor their dependencies), so a conftest.py here would not be read: each test module
that uses them names this module in its ``pytest_plugins``.
"""

from __future__ import annotations

from typing import Any

import pytest

from test.deploy.environments import load_compose, load_k8s


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return load_k8s()

"""The deploy tests (run by test/deploy/validate.sh)."""

import pytest

# Assertions in the shared helpers report as those in a test module do (pytest rewrites them).
pytest.register_assert_rewrite("test.deploy.manifests", "test.deploy.loopback")

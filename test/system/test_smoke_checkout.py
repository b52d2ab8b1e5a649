"""env/smoke-checkout.sh, the check an operator runs after `docker compose up`, against this
stack's gateway (the same API as compose's): one checkout, paid, with its effects. Its
failures are shown against a stand-in gateway in test/deploy/test_smoke_checkout.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "env" / "smoke-checkout.sh"


def test_smoke_checkout_passes_against_the_gateway(gateway_url: str) -> None:
    done = subprocess.run(
        [str(SCRIPT), gateway_url], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "paid through" in done.stdout, done.stdout

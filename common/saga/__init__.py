"""A reusable saga orchestrator: declare the steps (``definition``), keep each saga's state in
the entity's own Redis hash (``log``), drive it from replies (``orchestrator``), re-drive or abort
the stalled ones (``sweeper``), let HTTP handlers await outcomes (``waiters``) and answer with a
saga's verdict (``verdict``: poll, decide, turn back).

It knows nothing of stock or payment: a service declares a ``SagaDefinition`` and wires these.
"""

from common.saga.definition import SagaDefinition, SagaRun, Step
from common.saga.orchestrator import Orchestrator, Outcome

__all__ = ["Orchestrator", "Outcome", "SagaDefinition", "SagaRun", "Step"]

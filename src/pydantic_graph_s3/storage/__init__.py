"""The storage layer, kept at its old import path: it is the `pydantic-s3-cas` distribution now.

pydantic-graph-s3 and pydantic-ai-harness-s3 share that one copy of the compare-and-swap code, the typed errors,
the shared client and telemetry. Everything below re-exports it, so `from pydantic_graph_s3.storage import ...`
keeps working.
"""

from pydantic_s3_cas import *  # noqa: F403
from pydantic_s3_cas import __all__ as __all__

"""S3 backends for pydantic-ai-harness: `S3StepStore` (StepPersistence) and `S3MemoryStore` (Memory).

Both write only by compare-and-swap through `pydantic_s3_cas`, the storage core shared with pydantic-graph-s3,
so any number of processes can share a bucket without losing or duplicating anything.
"""

from pydantic_s3_cas import CasStats, ClientSettings, RetryPolicy

from .memory_store import S3MemoryStore
from .step_store import RunAlreadyRegisteredError, S3StepStore

__all__ = ('S3StepStore', 'S3MemoryStore', 'RunAlreadyRegisteredError', 'ClientSettings', 'RetryPolicy', 'CasStats')

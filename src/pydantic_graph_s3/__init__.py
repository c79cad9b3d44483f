"""pydantic-graph 1.x state persistence in Amazon S3, with compare-and-swap writes instead of lock files."""

from .persistence import Claim, ClaimLostError, RunRecord, S3StatePersistence, run_object_key, validate_run_id
from .storage import (
    AccessDeniedError,
    BucketNotFoundError,
    CasStats,
    ClientSettings,
    ConditionalWritesUnsupportedError,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    RetryPolicy,
    S3PersistenceError,
    verify_conditional_writes,
)

__all__ = (
    'S3StatePersistence',
    'run_object_key',
    'validate_run_id',
    'Claim',
    'ClaimLostError',
    'RunRecord',
    'verify_conditional_writes',
    'ConditionalWritesUnsupportedError',
    'RetryPolicy',
    'ClientSettings',
    'CasStats',
    'S3PersistenceError',
    'AccessDeniedError',
    'BucketNotFoundError',
    'CorruptObjectError',
    'CredentialsError',
    'EndpointUnreachableError',
    'ObjectTooLargeError',
    'RetriesExhaustedError',
)

"""Time travel: forking a run at a snapshot, rolling a run back to one, and correcting a waiting run's state.

A snapshot made by a fork or a rollback is a `created` copy of an earlier node snapshot, marked with where it came
from under the key `"copy_of"` (pydantic-graph ignores unknown keys, so `FileStatePersistence` still reads it):
`{"run_id": ..., "snapshot_id": ..., "reason": "fork" | "rollback", "at": ISO time}`.
"""

from __future__ import annotations as _annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ('CopyOf', 'COPY_OF_KEY', 'copy_of')

COPY_OF_KEY = 'copy_of'
"""The key, in a snapshot's stored JSON object, that says which snapshot it is a copy of."""


@dataclass(frozen=True)
class CopyOf:
    """Where a snapshot made by a fork or a rollback came from."""

    run_id: str
    snapshot_id: str
    reason: Literal['fork', 'rollback']
    at: datetime | None = None


def copy_of(item: Any) -> CopyOf | None:
    """The origin a stored snapshot (as plain JSON) records, or `None` (also for a malformed marker)."""
    marker = item.get(COPY_OF_KEY) if isinstance(item, dict) else None
    if not isinstance(marker, dict):
        return None
    run_id, snapshot_id, reason = marker.get('run_id'), marker.get('snapshot_id'), marker.get('reason')
    if not isinstance(run_id, str) or not isinstance(snapshot_id, str) or reason not in ('fork', 'rollback'):
        return None
    at: datetime | None = None
    if isinstance(marker.get('at'), str):
        try:
            at = datetime.fromisoformat(marker['at'])
        except ValueError:
            at = None
    return CopyOf(run_id, snapshot_id, 'fork' if reason == 'fork' else 'rollback', at)

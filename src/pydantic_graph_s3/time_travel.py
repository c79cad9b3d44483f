"""Time travel: forking a run at a snapshot, rolling a run back to one, and correcting a waiting run's state.

Each is one pure change to a run's head (`RunHead`, see `layout`), applied by the compare-and-swap primitive
like every worker's write, so it races workers safely: whichever writes first, the other's change is decided
again on what the first wrote.

A snapshot made by a fork or a rollback is a `created` copy of an earlier node snapshot (its stored bytes, with
a new id, `created` status, no start or duration, and the state replaced when asked), marked with where it came
from under the key `"copy_of"`, which pydantic-graph ignores, so `FileStatePersistence` still reads it:
`{"run_id": ..., "snapshot_id": ..., "reason": "fork" | "rollback", "at": ISO time}`.
"""

from __future__ import annotations as _annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import pydantic
from pydantic_graph.graph import Graph

from pydantic_s3_cas import Change, ObjectChangedError, ObjectExistsError, ObjectNotFoundError

from .changes import RunContext, is_stale
from .layout import Claim, Element, RunHead, decode_head, encode_head

__all__ = (
    'SUPERSEDED',
    'is_superseded',
    'COPY_OF_KEY',
    'CopyOf',
    'copy_of',
    'SnapshotNotFoundError',
    'SnapshotKindError',
    'StateValidationError',
    'RunBusyError',
    'validated_state',
    'KEEP_STATE',
    'Version',
    'fork_head',
    'create_fork',
    'rollback',
    'update_waiting_state',
)

SUPERSEDED = 'superseded by rollback'
"""How the claim error of a snapshot a rollback marked `error` begins."""

COPY_OF_KEY = 'copy_of'
"""The key, in a snapshot's stored JSON object, that says which snapshot it is a copy of."""

KEEP_STATE: Any = object()
"""Copy the snapshot's state as stored (the default of every operation that can replace it)."""


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


@dataclass(frozen=True)
class Version:
    """A version of a run's head an operator decided on: its ETag, and its bytes (what a change compares)."""

    etag: str
    body: bytes


class SnapshotNotFoundError(LookupError):
    """The run has no snapshot with this id."""

    def __init__(self, run_id: str, snapshot_id: str) -> None:
        self.run_id, self.snapshot_id = run_id, snapshot_id
        super().__init__(
            f'run {run_id} has no snapshot {snapshot_id!r}: `pydantic-graph-s3 runs show {run_id}` lists its ids'
        )


class SnapshotKindError(ValueError):
    """The snapshot is not one the operation can start from (an end snapshot: the run ends there)."""


class StateValidationError(ValueError):
    """The state given does not validate as the graph's state type (the message names fields, never values)."""


class RunBusyError(RuntimeError):
    """The run is not in a state this operation may change now (claimed by a live worker, or ended)."""


def validated_state(graph: Graph[Any, Any, Any], state: Any) -> Any:
    """`state` (an instance, its JSON-ready form, or JSON bytes/text) validated as the graph's state type,
    returned in JSON-ready form. Raises `StateValidationError` saying which fields fail, never their values."""
    state_type = graph.inferred_types[0]
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(state_type)
    try:
        value = adapter.validate_json(state) if isinstance(state, str | bytes) else adapter.validate_python(state)
    except pydantic.ValidationError as e:
        problems = e.errors(include_url=False, include_input=False)
        where = '; '.join(
            f'{".".join(str(p) for p in error["loc"]) or "top level"}: {error["msg"]}' for error in problems[:3]
        )
        name = getattr(state_type, '__name__', str(state_type))
        raise StateValidationError(f'the state is not a valid {name} ({len(problems)} error(s): {where})') from None
    return adapter.dump_python(value, mode='json')


def _copied(element: Element, *, run_id: str, reason: str, state: Any, now: datetime) -> Element:
    """A `created` copy of a node snapshot under a new id: its stored bytes with only these keys changed."""
    new_id = f'{element.node_id}:{uuid.uuid4().hex}'
    marker = {'run_id': run_id, 'snapshot_id': element.id, 'reason': reason, 'at': now.isoformat()}
    keys: dict[str, Any] = {'id': new_id, 'status': 'created', 'start_ts': None, 'duration': None}
    if state is not KEEP_STATE:
        keys['state'] = state
    copy = element.patched(**keys, copy_of=marker)
    if element.claim is not None:
        # The source's claim would count its attempts against the copy: a revoked one (nobody's token) resets them.
        copy = copy.patched(claim=Claim(uuid.uuid4().hex, now, attempt=0))
    return replace(copy, id=new_id, status='created')


def _node_to_copy(elements: Sequence[Element], run_id: str, snapshot_id: str) -> int:
    for index, element in enumerate(elements):
        if element.id == snapshot_id:
            if element.kind != 'node':
                raise SnapshotKindError(
                    f'snapshot {snapshot_id!r} of run {run_id} is its end snapshot: choose a node snapshot before it'
                )
            return index
    raise SnapshotNotFoundError(run_id, snapshot_id)


def fork_head(
    elements: Sequence[Element], *, source_run_id: str, at: str, state: Any, now: datetime
) -> tuple[RunHead, str]:
    """The head of a fork (before sealing): the history before snapshot `at`, then a `created` copy of `at`.

    The snapshots before `at` are copied byte for byte; a snapshot among them that is not finished (a claimed or
    waiting node a rollback left behind would be `error` by then, so this is a run forked mid-air) is refused,
    since a worker of the fork would run it. Returns the head and the copy's snapshot id.
    """
    index = _node_to_copy(elements, source_run_id, at)
    live = [e.id for e in elements[:index] if not e.finished]
    if live:
        raise RunBusyError(
            f'snapshot(s) {", ".join(live)} of run {source_run_id} before {at!r} are not finished: fork at one of them'
        )
    copy = _copied(elements[index], run_id=source_run_id, reason='fork', state=state, now=now)
    return RunHead((*elements[:index], copy)), copy.id


def create_fork(ctx: RunContext, bucket: str, fork: RunHead, result: str, head: RunHead) -> Change[RunHead, str]:
    """Create the fork's head (and segments), only where no run exists: a fork never overwrites a run."""
    if head.snapshots:
        raise ObjectExistsError(bucket, ctx.key)
    # The history copied was finished in the source's version read, and never changes again: sealable as read.
    return ctx.commit(fork, fork, result)


def _check_head(head: RunHead, expected: Version | None, bucket: str, key: str, operation: str) -> None:
    """Refuse a run that does not exist, and one that is no longer the version the operator decided on."""
    if not head.snapshots:
        raise ObjectNotFoundError(bucket, key)
    # Compared as this library renders heads: a head still in an imported file's layout is the same version.
    if expected is not None and encode_head(head) != _rendered_head(expected.body):
        raise ObjectChangedError(bucket, key, expected.etag, operation)


def _rendered_head(body: bytes) -> bytes | None:
    try:
        return encode_head(decode_head(body))
    except ValueError:
        return None  # not a head at all: no head read now equals it


def _refuse_live_claims(head: RunHead, now: datetime, stale_after: timedelta, run_id: str) -> list[int]:
    """The indexes of the head's claimed snapshots, all stale; raises `RunBusyError` for a live one."""
    claimed = []
    for index, element in enumerate(head.snapshots):
        if element.kind != 'node' or element.status not in ('pending', 'running'):
            continue
        if element.claim is None:
            raise RunBusyError(
                f'snapshot {element.id} of run {run_id} is {element.status} without a claim (its worker runs '
                'without reclaim_after), so it cannot be fenced: if its worker is gone, `runs recover` it first'
            )
        if not is_stale(element.claim, now, stale_after):
            raise RunBusyError(
                f'snapshot {element.id} of run {run_id} is {element.status}, claimed at '
                f'{element.claim.claimed_at.isoformat()}: wait for its step to finish, or for the claim to be older '
                f'than {stale_after.total_seconds():g}s (--stale-after) if its worker is gone'
            )
        claimed.append(index)
    return claimed


def rollback(
    ctx: RunContext,
    run_id: str,
    bucket: str,
    to: str,
    state: Any,
    stale_after: timedelta,
    expected: Version | None,
    head: RunHead,
) -> Change[RunHead, str]:
    """Append a `created` copy of snapshot `to`, so that the run continues from there; returns the copy's id.

    Nothing is deleted. Snapshots that were waiting (`created`), or claimed under a stale claim, are superseded:
    marked `error`, their claim revoked with the reason, so no worker runs them and a worker that still holds
    one is fenced. Refused (`RunBusyError`) while a claim is live, and once the run has ended (fork it instead).
    """
    _check_head(head, expected, bucket, ctx.key, 'the rollback')
    if head.snapshots[-1].kind == 'end':
        raise RunBusyError(f'run {run_id} has ended: fork it at snapshot {to!r} instead (`runs fork`)')
    now = ctx.clock()
    stale = _refuse_live_claims(head, now, stale_after, run_id)
    _, element = ctx.locate(head, to)
    if element is None:
        raise SnapshotNotFoundError(run_id, to)
    _node_to_copy([element], run_id, to)
    copy = _copied(element, run_id=run_id, reason='rollback', state=state, now=now)
    changed = head
    for index, superseded in enumerate(head.snapshots):
        if index in stale or (superseded.kind == 'node' and superseded.status == 'created'):
            attempt = 0 if superseded.claim is None else superseded.claim.attempt
            revoked = Claim(uuid.uuid4().hex, now, attempt, f'{SUPERSEDED} to {to} (snapshot {copy.id})')
            changed = changed.with_element(index, superseded.patched(status='error', claim=revoked))
    return ctx.commit(head, changed.appended(copy), copy.id)


def update_waiting_state(
    ctx: RunContext, run_id: str, bucket: str, state: Any, expected: Version | None, head: RunHead
) -> Change[RunHead, str]:
    """Replace the state of the run's waiting (`created`) snapshot; returns its id. Refused once it is claimed."""
    _check_head(head, expected, bucket, ctx.key, 'the state update')
    for index, element in enumerate(head.snapshots):
        if element.kind == 'node' and element.status == 'created':
            return ctx.commit(head, head.with_element(index, element.patched(state=state)), element.id)
    last = head.snapshots[-1] if head.snapshots else None
    status = 'empty' if last is None else last.status
    raise RunBusyError(
        f'run {run_id} has no waiting snapshot to correct (its last snapshot is {status}): its state can only be '
        'changed before a worker claims the step; ' + _what_works(last)
    )


def _what_works(last: Element | None) -> str:
    """An ended run can only be forked (a rollback refuses it); one still running can be rolled back too."""
    if last is not None and last.kind == 'end':
        return 'it has ended: fork it with the new state instead (`runs fork --state`)'
    return 'roll it back (`runs rollback --state`) or fork it instead'


def is_superseded(claim_error: object) -> bool:
    """Whether a snapshot's claim error says a rollback marked it `error`, rather than a failure of its own."""
    return isinstance(claim_error, str) and claim_error.startswith(SUPERSEDED)

"""The change functions of a run: every write to a run is one of these, applied by compare-and-swap on its head.

They are pure: each reads the `RunHead` it is given and returns a `Change` (a new head, what to return, and the
segments to create first), because the compare-and-swap loop may call it again on a fresher head after a
conflict, and caches the head it wrote. What they return to callers is decoded afresh from stored bytes, so it
shares nothing with the cached head.

Every change ends in `commit`, which seals finished history into segments (see `layout.seal`), so sealing is
part of an ordinary write and never a write of its own.
"""

from __future__ import annotations as _annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

import pydantic
from pydantic_graph.exceptions import GraphNodeStatusError
from pydantic_graph.persistence import NodeSnapshot, Snapshot, SnapshotStatus

from pydantic_s3_cas import Change
from pydantic_s3_cas.cas import CLOCK_TOLERANCE

from ._messages import describe_validation_error, schema_field_names
from .layout import (
    Claim,
    Element,
    RunHead,
    chain_link,
    decode_head,
    encode_head,
    new_segment_id,
    render_list,
    seal,
    segment_key,
)

R = TypeVar('R')


@dataclass(frozen=True)
class SnapshotTypes:
    """A graph's snapshot list adapter and node ids: typed snapshots to elements and back, one at a time."""

    adapter: pydantic.TypeAdapter[list[Any]]
    node_ids: frozenset[str]

    def element(self, snapshot: Snapshot[Any, Any]) -> Element:
        """A new snapshot as stored: rendered exactly as in `FileStatePersistence`'s file."""
        raw = self.adapter.dump_json([snapshot], indent=2)[4:-2]
        if isinstance(snapshot, NodeSnapshot):
            return Element(raw, snapshot.id, 'node', snapshot.status, snapshot.node.get_node_id())
        return Element(raw, snapshot.id, 'end', 'end')

    def snapshot(self, element: Element) -> Snapshot[Any, Any]:
        return self.snapshots([element])[0]

    def snapshots(self, elements: Sequence[Element]) -> list[Snapshot[Any, Any]]:
        """Elements validated with the graph's types (unknown keys are ignored). Raises `ValueError`."""
        try:
            return self.adapter.validate_json(render_list(e.raw for e in elements))
        except pydantic.ValidationError as e:
            # Described without the stored values or state keys (and `from None`): the message ends up in logs (see
            # `_messages`). The field names are gathered only here, on the rare failure.
            where = describe_validation_error(e, field_names=schema_field_names(self.adapter.core_schema))
            raise ValueError(f'{e.error_count()} validation error(s); at {where}') from None
        except (TypeError, AttributeError, KeyError) as e:  # a node that is not an object trips the discriminator
            raise ValueError(f'not a snapshot list: {type(e).__name__}') from None

    def check_nodes(self, elements: Sequence[Element], first_index: int = 0) -> None:
        # pydantic-graph only discriminates on node_id when a graph has several node types: with one, any node_id
        # validates, and another graph's run would be taken for ours and overwritten.
        for index, element in enumerate(elements, first_index):
            if element.node_id is not None and element.node_id not in self.node_ids:
                nodes = ', '.join(sorted(self.node_ids))
                raise ValueError(f'snapshot {index} is of a node that is not in this graph (nodes: {nodes})')


@dataclass(frozen=True)
class HeadCodec:
    """The `Codec` of a run's head for `CasObject`: elements kept as bytes, checked on every decode.

    The live tail is also validated with the graph's types (and the result dropped), so a run this graph cannot
    run is refused before any write, as when the whole list was decoded; the tail is bounded, so this costs
    the same at every step. Sealed history is validated only when it is loaded.
    """

    types: SnapshotTypes

    def decode(self, body: bytes) -> RunHead:
        head = decode_head(body)
        self.types.check_nodes(head.snapshots, head.sealed_snapshots)
        self.types.snapshots(head.snapshots)
        return head

    def encode(self, value: RunHead) -> bytes:
        return encode_head(value)

    def empty(self) -> RunHead:
        return RunHead()


@dataclass(frozen=True)
class Sealed:
    """What a worker has read of a run's segments: the elements of segments 1..`count`, in order, and the chain
    (`chain_link`) after each segment."""

    segment_id: str | None = None
    count: int = 0
    elements: tuple[Element, ...] = ()
    links: tuple[str, ...] = ()

    @cached_property
    def by_id(self) -> dict[str, Element]:
        return {e.id: e for e in self.elements}

    def covers(self, head: RunHead) -> bool:
        """Whether these are the segments `head` counts (all of them, and the ones its chain names)."""
        if head.segment_id != self.segment_id or self.count < head.sealed_segments:
            return False
        return head.chain is None or head.sealed_segments == 0 or self.links[head.sealed_segments - 1] == head.chain

    def extended(self, body: bytes, elements: Sequence[Element]) -> Sealed:
        """With the next segment (its bytes and elements) read."""
        previous = self.links[-1] if self.links else self.segment_id or ''
        return Sealed(
            self.segment_id, self.count + 1, (*self.elements, *elements), (*self.links, chain_link(previous, body))
        )


class NeedSealed(Exception):
    """Raised by a change that must look at sealed history this worker has not read: read it and try again."""

    def __init__(self, head: RunHead) -> None:
        super().__init__('sealed history needed')
        self.head = head


@dataclass(frozen=True)
class RunContext:
    """What every change of one run needs besides the head: the head's key (for segment keys), the graph's
    types, the sealed history read so far, and the S3 clock claims are judged by."""

    key: str
    types: SnapshotTypes
    sealed: Sealed
    clock: Callable[[], datetime]

    def commit(self, read: RunHead, head: RunHead, result: R) -> Change[RunHead, R]:
        """Write `head` (made from the stored version `read`), sealing what is due: the segments are created
        before the head that counts them, and hold only snapshots `read` already had finished."""
        final = frozenset(e.id for e in read.snapshots if e.finished)
        sealed_head, segments = seal(head, final, lambda: new_segment_id(read))
        assert sealed_head.segment_id is not None or not segments
        creates = [(segment_key(self.key, sealed_head.segment_id or '', s.seq), s.body) for s in segments]
        return Change(sealed_head, result, creates)

    def locate(self, head: RunHead, snapshot_id: str) -> tuple[int | None, Element | None]:
        """Where a snapshot is: `(index in the head, element)`, `(None, element)` when sealed, or `(None, None)`."""
        index = head.index(snapshot_id)
        if index is not None:
            return index, head.snapshots[index]
        if head.sealed_segments == 0:
            return None, None
        if not self.sealed.covers(head):
            raise NeedSealed(head)
        return None, self.sealed.by_id.get(snapshot_id)

    def node(self, head: RunHead, snapshot_id: str) -> tuple[int, Element]:
        """The node snapshot `snapshot_id` in the head, with `FileStatePersistence`'s errors when it is not there."""
        index, element = self.locate(head, snapshot_id)
        if element is None:
            raise LookupError(f'No snapshot found with id={snapshot_id!r}')
        if element.kind != 'node':
            raise TypeError(f'snapshot {snapshot_id!r} is an end snapshot: only node snapshots can be recorded')
        if index is None:
            GraphNodeStatusError.check(element.status)  # type: ignore[arg-type]  # sealed: finished, so it raises
            raise AssertionError('a sealed snapshot is always finished')
        return index, element


@dataclass(frozen=True)
class Finished:
    """A node that ran successfully: its success is written together with its successor, in one write."""

    snapshot_id: str
    token: str | None
    """The claim it ran under (with `reclaim_after`), or `None`."""
    duration: float


class Fenced(Exception):
    """Raised inside a change function when its claim is not current; the persistence makes it `ClaimLostError`."""

    def __init__(self, snapshot_id: str, detail: str) -> None:
        super().__init__(detail)
        self.snapshot_id = snapshot_id
        self.detail = detail


def append_if_new(ctx: RunContext, element: Element, search_sealed: bool, head: RunHead) -> Change[RunHead, None]:
    """Append a snapshot unless one with its id is stored: then an earlier attempt's write landed after all.

    `search_sealed` is for ids a caller chose (`snapshot_node_if_new`): fresh ids can only be in the head.
    """
    found = ctx.locate(head, element.id)[1] if search_sealed else head.index(element.id)
    if found is not None:
        return Change(None, None)
    _refuse_after_end(head)
    return ctx.commit(head, head.appended(element), None)


def create_if_empty(ctx: RunContext, element: Element, head: RunHead) -> Change[RunHead, RunHead | None]:
    """Create the run with its first snapshot; when it exists already, write nothing and return its head."""
    if head.snapshots:
        return Change(None, head)
    return ctx.commit(head, head.appended(element), None)


def claim_next_created(
    ctx: RunContext, start_ts: datetime, head: RunHead
) -> Change[RunHead, NodeSnapshot[Any, Any] | None]:
    """Claim the first `created` node snapshot and start it (`running` since `start_ts`): one write for both."""
    # `created` snapshots are never sealed, so the head has them all.
    for index, element in enumerate(head.snapshots):
        if element.kind == 'node' and element.status == 'created':
            # A claim without a token: drop any claim `recover` left, which is not this worker's and would hide
            # from the next `recover` that this step's holder cannot be fenced.
            claimed = element.patched(status='running', start_ts=start_ts, claim=None)
            return ctx.commit(head, head.with_element(index, claimed), _node(ctx, claimed))
    return Change(None, None)


def start_run(ctx: RunContext, snapshot_id: str, start_ts: datetime, head: RunHead) -> Change[RunHead, None]:
    index, element = ctx.node(head, snapshot_id)
    GraphNodeStatusError.check(element.status)  # type: ignore[arg-type]
    return ctx.commit(head, head.with_element(index, element.patched(status='running', start_ts=start_ts)), None)


def finish_run(
    ctx: RunContext, snapshot_id: str, duration: float, status: SnapshotStatus, head: RunHead
) -> Change[RunHead, None]:
    """Record a node's error (or a success no successor followed) on its own."""
    index, element = ctx.node(head, snapshot_id)
    if element.status == status:
        return Change(None, None)  # an earlier attempt's write landed unseen
    return ctx.commit(head, head.with_element(index, element.patched(status=status, duration=duration)), None)


def append_successor(ctx: RunContext, finished: Finished, successor: Element, head: RunHead) -> Change[RunHead, None]:
    """Record a node's success and append its successor in one write (if the node's claim is still ours)."""
    if head.index(successor.id) is not None:
        return Change(None, None)  # an earlier attempt's write landed unseen
    if finished.token is None:
        index, element = ctx.node(head, finished.snapshot_id)
    else:
        index, element = check_fence(ctx, head, finished.snapshot_id, finished.token)
    _refuse_after_end(head)
    succeeded = element.patched(status='success', duration=finished.duration)
    return ctx.commit(head, head.with_element(index, succeeded).appended(successor), None)


# With reclaim_after: claims and fencing. A claim is current when the snapshot's claim has the caller's token.


def is_stale(claim: Claim, now: datetime, reclaim_after: timedelta) -> bool:
    """Whether a claim can no longer be live: older than `reclaim_after`, or dated further ahead than that.

    `now` is the S3 endpoint's clock (see `CasObject.server_now`), the one clock every worker shares. A claim
    from the future was stamped by a clock that ran ahead, so its age says nothing; one dated more than
    `reclaim_after` (plus the clocks' tolerance, twice) ahead is given up on like an old one, so no clock error
    can keep a run busy for ever.
    """
    age = now - claim.claimed_at
    return age >= reclaim_after or -age > reclaim_after + 2 * CLOCK_TOLERANCE


def claim_next(
    ctx: RunContext, start_ts: datetime, token: str, reclaim_after: timedelta, max_attempts: int, head: RunHead
) -> Change[RunHead, NodeSnapshot[Any, Any] | None]:
    """Claim the first `created` node snapshot; failing that, take over the first stale claim. The claimed
    snapshot is started (`running` since `start_ts`) in the same write."""
    now = ctx.clock()
    nodes = [(i, e) for i, e in enumerate(head.snapshots) if e.kind == 'node']
    for _, element in nodes:
        if element.claim is not None and element.claim.token == token and element.status == 'running':
            return Change(None, _node(ctx, element))  # an earlier attempt's claim landed unseen
    for index, element in nodes:
        if element.status == 'created':
            released = element.claim  # by `recover`, which keeps the count
            attempt = 1 if released is None else released.attempt + 1
            claimed = element.patched(status='running', start_ts=start_ts, claim=Claim(token, now, attempt))
            return ctx.commit(head, head.with_element(index, claimed), _node(ctx, claimed))
    for index, element in nodes:
        claim = element.claim
        # Claims without a token (made by a worker without reclaim_after) cannot be fenced, so are never taken.
        if element.status not in ('pending', 'running') or claim is None or not is_stale(claim, now, reclaim_after):
            continue
        if claim.attempt >= max_attempts:
            reason = (
                f'abandoned: {claim.attempt} claim(s) went stale (none finished within reclaim_after='
                f'{reclaim_after.total_seconds():g}s), max_attempts={max_attempts} reached'
            )
            failed = element.patched(status='error', claim=Claim(claim.token, claim.claimed_at, claim.attempt, reason))
            return ctx.commit(head, head.with_element(index, failed), None)
        reclaimed = element.patched(status='running', start_ts=start_ts, claim=Claim(token, now, claim.attempt + 1))
        return ctx.commit(head, head.with_element(index, reclaimed), _node(ctx, reclaimed))
    return Change(None, None)


class Unfenced(Exception):
    """Raised by `release_claims` when a claimed snapshot has no claim token; `recover` reports it."""

    def __init__(self, snapshot_ids: list[str]) -> None:
        super().__init__(', '.join(snapshot_ids))
        self.snapshot_ids = snapshot_ids


def release_claims(ctx: RunContext, token: str, force: bool, head: RunHead) -> Change[RunHead, list[str]]:
    """Every `pending` or `running` node snapshot back to `created`, under a claim token nobody holds.

    A snapshot claimed without a token (by a worker without `reclaim_after`) cannot be fenced, so releasing it
    may fork the run if its worker is alive: refused (`Unfenced`) unless `force`.
    """
    claimed = [e for e in head.snapshots if e.kind == 'node' and e.status in ('pending', 'running')]
    unfenced = [e.id for e in claimed if e.claim is None]
    if unfenced and not force:
        raise Unfenced(unfenced)
    now, original = ctx.clock(), head
    released: list[str] = []
    for index, element in enumerate(head.snapshots):
        if element.kind == 'node' and element.status in ('pending', 'running'):
            revoked = Claim(token, now, attempt=0 if element.claim is None else element.claim.attempt)
            head = head.with_element(index, element.patched(status='created', start_ts=None, claim=revoked))
            released.append(element.id)
    return ctx.commit(original, head, released) if released else Change(None, released)


def start_claimed_run(
    ctx: RunContext, snapshot_id: str, held: str | None, token: str, start_ts: datetime, head: RunHead
) -> Change[RunHead, None]:
    """Start a node under a new claim `token`; under the claim `held` (from `load_next`, whose write started it
    already), write nothing, only check that the claim is still this worker's."""
    index, element = ctx.node(head, snapshot_id)
    claim = element.claim
    if claim is not None and claim.token == token:
        if element.status == 'running':
            return Change(None, None)  # started by our `load_next`, or an earlier attempt's start landed unseen
        GraphNodeStatusError.check(element.status)  # type: ignore[arg-type]
        return ctx.commit(head, head.with_element(index, element.patched(status='running', start_ts=start_ts)), None)
    if held is not None:
        raise Fenced(snapshot_id, taken_over(claim))
    GraphNodeStatusError.check(element.status)  # type: ignore[arg-type]
    if claim is not None and element.status == 'pending':
        raise Fenced(snapshot_id, f'it is claimed by another worker (attempt {claim.attempt})')
    attempt = 1 if claim is None else claim.attempt + 1
    started = element.patched(status='running', start_ts=start_ts, claim=Claim(token, ctx.clock(), attempt))
    return ctx.commit(head, head.with_element(index, started), None)


def finish_claimed_run(
    ctx: RunContext, snapshot_id: str, token: str, duration: float, status: SnapshotStatus, head: RunHead
) -> Change[RunHead, None]:
    index, element = check_fence(ctx, head, snapshot_id, token)
    if element.status == status:
        return Change(None, None)  # an earlier attempt's write landed unseen
    return ctx.commit(head, head.with_element(index, element.patched(status=status, duration=duration)), None)


def check_fence(ctx: RunContext, head: RunHead, snapshot_id: str, token: str) -> tuple[int, Element]:
    index, element = ctx.node(head, snapshot_id)
    claim = element.claim
    # A claim marked with an error was given up on (max_attempts), even if its token is still ours.
    if claim is None or claim.token != token or claim.error is not None:
        raise Fenced(snapshot_id, taken_over(claim))
    return index, element


def taken_over(claim: Claim | None) -> str:
    if claim is None:
        return 'its claim is gone'
    if claim.error is not None:
        return claim.error
    return f'taken over by attempt {claim.attempt} at {claim.claimed_at.isoformat()}'


def _node(ctx: RunContext, element: Element) -> NodeSnapshot[Any, Any]:
    snapshot = ctx.types.snapshot(element)
    assert isinstance(snapshot, NodeSnapshot)
    return snapshot


def _refuse_after_end(head: RunHead) -> None:
    if head.snapshots and head.snapshots[-1].kind == 'end':
        raise ValueError('the run has ended: nothing can be appended after its end snapshot')

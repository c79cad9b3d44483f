"""The stored format of a run: a head object that compare-and-swap updates, and immutable segments of history.

A run's head, `{prefix}{run_id}.json`, is the only object of the run ever overwritten. It has one of two forms:

- *single*: the snapshot list exactly as `FileStatePersistence` writes its file (`dump_json(indent=2)`), used
  until the run has `SEAL_THRESHOLD` bytes of finished snapshots;
- *segmented*: `{"pydantic_graph_s3": "segmented-1", "segment_id": ..., "sealed_segments": n,
  "sealed_snapshots": m, "segment_chain": ..., "snapshots": [...]}`, whose `snapshots` list (rendered like the
  file) is the live tail.

The history before the tail lives in segments `{prefix}{run_id}~{segment_id}~{seq:08d}.json` (seq 1..n), each a
File-format list of finished snapshots, written once with `IfNoneMatch='*'` and never changed. The segment id is
drawn when the run is first sealed (see `new_segment_id`), so a run created again under the same id never meets
the old run's leftovers; `segment_chain` is a digest of segments 1..n in order (see `chain_link`), so a segment
swapped, reordered, changed or taken from another run is refused when it is read. Heads sealed before the chain
was recorded (12-digit segment ids, taken from the first snapshot's id) have none, and keep none.

Snapshots are kept as `Element`s: the exact bytes stored plus the few fields the change functions look at. An
element a change does not touch is written back byte for byte, so keys a worker's state type does not know
survive it; a change to one patches only the keys it sets (`Element.patched`).
"""

from __future__ import annotations as _annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeGuard

import pydantic
import pydantic_core

__all__ = (
    'RUN_ID_PATTERN',
    'SEAL_THRESHOLD',
    'SEGMENTED_FORMAT',
    'Claim',
    'Element',
    'RunHead',
    'decode_head',
    'decode_segment',
    'chain_link',
    'encode_head',
    'new_segment_id',
    'parse_segment_key',
    'render_list',
    'seal',
    'segment_key',
    'segment_group_prefix',
    'split_list',
)

SEAL_THRESHOLD = 8 * 1024
"""Bytes of finished snapshots at the front of the head that are moved into a segment at the next write.

A library constant, not an option: every writer must propose the same bytes for the same segment key.
"""
SEGMENTED_FORMAT = 'segmented-1'
_FORMAT_KEY = 'pydantic_graph_s3'
_FINISHED = frozenset({'success', 'error', 'end'})
_STATUSES = frozenset({'created', 'pending', 'running', 'success', 'error'})
_MAX_ATTEMPT = 1_000_000


@dataclass(frozen=True)
class Claim:
    """Who holds a node snapshot's step, since when, and how many claims it has had; stored in the snapshot.

    Written only when `reclaim_after` is set. `token` is unique per claim, so a worker can tell that its claim
    was taken over, and so that no two claims ever write the same bytes. `error` says why a snapshot was marked
    `error` by the reclaim bound (`max_attempts`) rather than by its node.
    """

    token: str
    claimed_at: datetime
    attempt: int = 1
    error: str | None = None


_CLAIM: pydantic.TypeAdapter[Claim] = pydantic.TypeAdapter(Claim)


@dataclass(frozen=True)
class Element:
    """One stored snapshot: its exact bytes (as they sit in an `indent=2` list) and the fields changes read."""

    raw: bytes
    id: str
    kind: str
    """`node` or `end`."""
    status: str
    """The node snapshot's status, or `end`."""
    node_id: str | None = None
    claim: Claim | None = None

    @property
    def finished(self) -> bool:
        """Whether this snapshot can never change again (a node that succeeded or failed, or the end)."""
        return self.status in _FINISHED

    def patched(self, **changes: Any) -> Element:
        """This element with top-level keys set (`status`, `start_ts`, `duration`, `claim`); other bytes kept.

        Values are rendered by pydantic-core, as the snapshot list adapter renders them, so a patched element is
        byte for byte what re-encoding the whole snapshot would give for a snapshot pydantic wrote. `claim=None`
        removes the claim.
        """
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == 'claim':
                values[key] = _REMOVED if value is None else _CLAIM.dump_python(value, mode='json', exclude_none=True)
            else:
                values[key] = value
        fields: dict[str, Any] = {k: v for k, v in changes.items() if k in ('status', 'claim')}
        return replace(self, raw=_patched_object(self.raw, values), **fields)


@dataclass(frozen=True)
class RunHead:
    """The head object of a run: its live tail of snapshots and, once sealed, where the history before it is."""

    snapshots: tuple[Element, ...] = ()
    segment_id: str | None = None
    """The nonce in the run's segment keys; `None` while the head is in the single (File) form."""
    sealed_segments: int = 0
    sealed_snapshots: int = 0
    chain: str | None = None
    """`chain_link` over segments 1..`sealed_segments`; `None` for a head segmented before it was recorded."""

    @property
    def segmented(self) -> bool:
        return self.segment_id is not None

    @property
    def total_snapshots(self) -> int:
        return self.sealed_snapshots + len(self.snapshots)

    def index(self, snapshot_id: str) -> int | None:
        """Where the snapshot with this id is in the head, or `None` when it is not there."""
        for index, element in enumerate(self.snapshots):
            if element.id == snapshot_id:
                return index
        return None

    def with_element(self, index: int, element: Element) -> RunHead:
        return replace(self, snapshots=(*self.snapshots[:index], element, *self.snapshots[index + 1 :]))

    def appended(self, element: Element) -> RunHead:
        return replace(self, snapshots=(*self.snapshots, element))


@dataclass(frozen=True)
class Segment:
    """A segment to create: its sequence number (from 1) and its bytes."""

    seq: int
    body: bytes
    snapshots: tuple[Element, ...] = field(repr=False, default=())


def new_segment_id(read: RunHead) -> str:
    """The segment id of a run first sealed by a write made from the stored head `read`: a digest of its bytes.

    Every writer that starts from the same stored version proposes the same id, so racing sealers agree (and the
    segment of a writer that died before its head swap is reused). A run created again under the same id has
    other bytes by the time it is sealed (snapshot ids are fresh UUIDs, steps are timed), so it gets another id
    and never meets the old run's leftovers. An import, whose bytes do repeat, draws a random one instead.
    """
    return hashlib.sha256(encode_head(read)).hexdigest()[:32]


def chain_link(previous: str, segment: bytes) -> str:
    """The chain after `segment`: the first segment links to the segment id, each next one to the chain before."""
    return hashlib.sha256(previous.encode() + hashlib.sha256(segment).digest()).hexdigest()


def segment_group_prefix(head_key: str) -> str:
    """The key prefix of every segment of the run whose head is `head_key` (`~` never occurs in a run id)."""
    return f'{head_key.removesuffix(".json")}~'


def segment_key(head_key: str, segment_id: str, seq: int) -> str:
    return f'{segment_group_prefix(head_key)}{segment_id}~{seq:08d}.json'


RUN_ID_PATTERN = r'[A-Za-z0-9._=-]{1,200}'
"""The characters of a run id (`persistence.validate_run_id` also refuses `.` and `..`): never `/` nor `~`."""
# A segment id is 12 hex digits (runs sealed before 0.x took it from the first snapshot id) or 32 (a creation
# nonce); seq is `{seq:08d}`: 8 digits, or more without a leading zero past 99,999,999.
_SEGMENT_ID = r'[0-9a-f]{12}|[0-9a-f]{32}'
_SEGMENT_NAME = re.compile(
    rf'(?P<run_id>{RUN_ID_PATTERN})~(?P<segment_id>{_SEGMENT_ID})~(?P<seq>[0-9]{{8}}|[1-9][0-9]{{8,}})\.json'
)


def parse_segment_key(prefix: str, key: str) -> tuple[str, str, int] | None:
    """`(run_id, segment_id, seq)` when `key` is exactly a segment key this library writes under `prefix`, else
    `None`: the one test of whether an object is a run's sealed history (an orphan sweep deletes nothing else).

    Exact: `segment_key` of the result gives `key` back, the run id is a valid one, nothing is nested deeper than
    `prefix`, and seq is at least 1.
    """
    if not key.startswith(prefix):
        return None
    match = _SEGMENT_NAME.fullmatch(key, len(prefix))
    if match is None or match['run_id'] in ('.', '..'):
        return None
    run_id, segment_id, seq = match['run_id'], match['segment_id'], int(match['seq'])
    if seq < 1 or segment_key(f'{prefix}{run_id}.json', segment_id, seq) != key:
        return None
    return run_id, segment_id, seq


def seal(head: RunHead, final: frozenset[str] | None, new_id: Callable[[], str]) -> tuple[RunHead, list[Segment]]:
    """Move finished history out of the head, `SEAL_THRESHOLD` bytes at a time; return the new head and segments.

    `final` are the ids of the snapshots that were already finished in the stored version the change started
    from (`None`: every finished one, for a head that is stored whole at once, as an import). Only those are
    sealed: a snapshot finished by this very write may yet lose the compare-and-swap (a fenced worker's
    success), and a segment made from it would be an orphan holding bytes that never became history.
    `new_id()` gives the segment id of a head sealed for the first time (see `new_segment_id`); it is called only
    then, so an ordinary write pays nothing for it.

    So a segment holds only snapshots that some stored head already had finished, and finished snapshots never
    change: every head version with the same sealed count proposes the same bytes for the same segment. The
    head's last snapshot is never sealed, so the tail always tells a run's current status.
    """
    segments: list[Segment] = []
    while (cut := _seal_cut(head.snapshots, final)) is not None:
        sealed, rest = head.snapshots[:cut], head.snapshots[cut:]
        segment_id = head.segment_id or new_id()
        seq = head.sealed_segments + 1
        body = render_list(e.raw for e in sealed)
        # A head segmented before chains were recorded keeps none: its earlier segments were never chained.
        chain = None if head.segmented and head.chain is None else chain_link(head.chain or segment_id, body)
        segments.append(Segment(seq, body, sealed))
        head = RunHead(rest, segment_id, seq, head.sealed_snapshots + cut, chain)
    return head, segments


def _seal_cut(snapshots: Sequence[Element], final: frozenset[str] | None) -> int | None:
    total = 0
    for index, element in enumerate(snapshots[:-1]):
        if not element.finished or (final is not None and element.id not in final):
            return None
        total += len(element.raw)
        if total >= SEAL_THRESHOLD:
            return index + 1
    return None


# --- bytes ---------------------------------------------------------------------------------------------------

_LIST_OPEN, _LIST_SEPARATOR, _LIST_CLOSE = b'[\n  ', b',\n  ', b'\n]'
_CANONICAL_SPLIT = b'\n  },\n  {\n'


def render_list(raws: Any) -> bytes:
    """A list of element bytes as `dump_json(indent=2)` renders a list (`[]` when empty)."""
    items = list(raws)
    if not items:
        return b'[]'
    return _LIST_OPEN + _LIST_SEPARATOR.join(items) + _LIST_CLOSE


def encode_head(head: RunHead) -> bytes:
    snapshots = render_list(e.raw for e in head.snapshots)
    if head.segment_id is None:
        return snapshots
    header = (
        f'{{"{_FORMAT_KEY}": "{SEGMENTED_FORMAT}", "segment_id": "{head.segment_id}", '
        f'"sealed_segments": {head.sealed_segments}, "sealed_snapshots": {head.sealed_snapshots}, '
        + ('' if head.chain is None else f'"segment_chain": "{head.chain}", ')
        + '"snapshots": '
    )
    return header.encode() + snapshots + b'}'


def decode_head(body: bytes) -> RunHead:
    """The head stored as `body`, checked for structure. Raises `ValueError` saying what is wrong."""
    start = _skip_space(body, 0)
    if body[start : start + 1] == b'[':
        return _checked(RunHead(tuple(split_list(body))))
    if body[start : start + 1] != b'{':
        raise ValueError('not a snapshot list: the top level is neither a list nor a segmented run head')
    members = {key: (begin, end) for key, _, begin, end in _members(body, start)}
    format_span = members.get(_FORMAT_KEY)
    if format_span is None or _json(body[slice(*format_span)]) != SEGMENTED_FORMAT:
        raise ValueError(f'not a snapshot list: an object without "{_FORMAT_KEY}": "{SEGMENTED_FORMAT}"')
    header = {key: _json(body[slice(*span)]) for key, span in members.items() if key != 'snapshots'}
    segment_id, segments = header.get('segment_id'), header.get('sealed_segments')
    sealed = header.get('sealed_snapshots')
    if not (isinstance(segment_id, str) and re.fullmatch(_SEGMENT_ID, segment_id)):
        raise ValueError('segmented run head: segment_id must be 12 or 32 hex digits')
    if not (_is_count(segments) and _is_count(sealed) and 1 <= segments <= sealed):
        raise ValueError('segmented run head: need 1 <= sealed_segments <= sealed_snapshots')
    chain = header.get('segment_chain')
    if chain is not None and not (isinstance(chain, str) and re.fullmatch(r'[0-9a-f]{64}', chain)):
        raise ValueError('segmented run head: segment_chain must be 64 hex digits')
    if 'snapshots' not in members:
        raise ValueError('segmented run head without "snapshots"')
    snapshots = split_list(body[slice(*members['snapshots'])])
    if not snapshots:
        raise ValueError('segmented run head with no live snapshot')
    return _checked(RunHead(tuple(snapshots), segment_id, segments, sealed, chain))


def _is_count(value: Any) -> TypeGuard[int]:
    """Whether a stored count is a JSON integer (`bool` is an `int` in Python, and `true` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def decode_segment(body: bytes) -> list[Element]:
    """The finished snapshots of one segment. Raises `ValueError` on a list that cannot be a segment."""
    elements = split_list(body)
    if not elements or any(not e.finished for e in elements):
        raise ValueError('a segment must hold finished snapshots only')
    if any(e.kind == 'end' for e in elements):
        raise ValueError('a segment holds an end snapshot, which only the head can hold (it is always the last)')
    return elements


def split_list(body: bytes) -> list[Element]:
    """The elements of a stored snapshot list, each with its exact bytes, whatever the list's JSON layout."""
    canonical = _canonical_items(body)
    if canonical is not None:
        try:
            return [_element(raw, index) for index, raw in enumerate(canonical)]
        except ValueError:
            pass  # not split where the elements end (a mixed layout, e.g. after an import): split exactly below
    return [_element(body[begin:end], index) for index, (begin, end) in enumerate(_list_spans(body))]


def _checked(head: RunHead) -> RunHead:
    """Structure every writer relies on: unique ids, and the end snapshot only last."""
    seen: set[str] = set()
    for index, element in enumerate(head.snapshots):
        if element.id in seen:
            raise ValueError(f'snapshot {head.sealed_snapshots + index} repeats snapshot id {element.id!r}')
        seen.add(element.id)
        if element.kind == 'end' and index != len(head.snapshots) - 1:
            raise ValueError(f'snapshot {head.sealed_snapshots + index} is an end snapshot but not the last one')
    return head


def _canonical_items(body: bytes) -> list[bytes] | None:
    """The items of a list in pydantic's `indent=2` layout, split without parsing; `None` for another layout.

    Only a guess for a list that merely looks like it (elements stored in other layouts, joined by this library):
    a wrong split leaves a part that is not one JSON value (a cut inside an element is unbalanced, a missed cut
    holds two values, and strings hold no raw newline), so the caller parses every part and falls back to
    `_list_spans` when one fails. Parts that all parse are the elements, as a JSON text has one parse.
    """
    stripped = body.strip()
    if not (stripped.startswith(b'[\n  {\n') and stripped.endswith(b'\n  }\n]')):
        return None
    parts = stripped[len(_LIST_OPEN) : -len(_LIST_CLOSE)].split(_CANONICAL_SPLIT)
    if len(parts) == 1:
        return parts
    return [parts[0] + b'\n  }', *(b'{\n' + p + b'\n  }' for p in parts[1:-1]), b'{\n' + parts[-1]]


def _list_spans(body: bytes) -> list[tuple[int, int]]:
    start = _skip_space(body, 0)
    if body[start : start + 1] != b'[':
        raise ValueError('not a snapshot list: the top level is not a list')
    return _items(body, start)


def _element(raw: bytes, index: int) -> Element:
    item = _json(raw, f'snapshot {index}')
    if not isinstance(item, dict):
        raise ValueError(f'snapshot {index} is not a JSON object')
    snapshot_id, kind = item.get('id'), item.get('kind')
    if not isinstance(snapshot_id, str) or not snapshot_id:
        raise ValueError(f'snapshot {index} has no id')
    if kind == 'end':
        return Element(raw, snapshot_id, 'end', 'end')
    if kind != 'node':
        raise ValueError(f'snapshot {index} is not a node or end snapshot')
    node, status = item.get('node'), item.get('status')
    if not isinstance(node, dict) or not isinstance(node.get('node_id'), str):
        raise ValueError(f'snapshot {index} has no node id')
    if status not in _STATUSES:
        raise ValueError(f'snapshot {index} has no valid status')
    claim = _claim(item['claim'], index) if 'claim' in item else None
    return Element(raw, snapshot_id, 'node', status, node['node_id'], claim)


def _claim(value: Any, index: int) -> Claim:
    if isinstance(value, dict) and isinstance(value.get('attempt'), bool):
        raise ValueError(f'snapshot {index} has an invalid claim: attempt is a boolean, not a count')
    try:
        claim = _CLAIM.validate_python(value)
    except pydantic.ValidationError as e:
        raise ValueError(f'snapshot {index} has an invalid claim: {e.errors()[0]["msg"]}') from e
    if claim.claimed_at.tzinfo is None:
        raise ValueError(f'snapshot {index} has an invalid claim: claimed_at has no time zone')
    if not 0 <= claim.attempt <= _MAX_ATTEMPT:
        raise ValueError(f'snapshot {index} has an invalid claim: attempt out of range 0..{_MAX_ATTEMPT}')
    if not claim.token:
        raise ValueError(f'snapshot {index} has an invalid claim: empty token')
    return claim


def _json(raw: bytes, what: str = 'run head') -> Any:
    try:
        return pydantic_core.from_json(raw)
    except ValueError as e:
        raise ValueError(f'{what} is not JSON: {str(e).splitlines()[0]}') from None


# A JSON string, or one structural character: enough to find where the items of an array or object begin and end.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')
_SPACE = b' \t\r\n'


def _skip_space(body: bytes, position: int) -> int:
    while position < len(body) and body[position] in _SPACE:
        position += 1
    return position


def _items(body: bytes, start: int) -> list[tuple[int, int]]:
    """Spans of the items directly inside the array or object that opens at `body[start]` (whitespace trimmed)."""
    depth, begin, spans = 0, start + 1, []
    for match in _TOKEN.finditer(body, start):
        token = match.group()
        if token in (b'[', b'{'):
            depth += 1
        elif token in (b']', b'}'):
            depth -= 1
            if depth == 0:
                spans.append(_trimmed(body, begin, match.start()))
                if spans == [(match.start(), match.start())]:
                    return []
                if any(b == e for b, e in spans):
                    raise ValueError('not a snapshot list: an empty item')
                return spans
        elif token == b',' and depth == 1:
            spans.append(_trimmed(body, begin, match.start()))
            begin = match.end()
    raise ValueError('not JSON: unbalanced brackets')


def _trimmed(body: bytes, begin: int, end: int) -> tuple[int, int]:
    while begin < end and body[begin] in _SPACE:
        begin += 1
    while end > begin and body[end - 1] in _SPACE:
        end -= 1
    return begin, end


def _members(body: bytes, start: int) -> list[tuple[str, int, int, int]]:
    """The members of the object opening at `body[start]`: key, where the member begins, and its value's span."""
    members = []
    for begin, end in _items(body, start):
        match = _TOKEN.match(body, begin)
        colon = _skip_space(body, match.end()) if match else begin
        if match is None or body[colon : colon + 1] != b':':
            raise ValueError('not JSON: an object member without a key')
        members.append((_json(match.group()), begin, _skip_space(body, colon + 1), end))
    return members


_REMOVED: Any = object()
"""A value of `_patched_object` that removes the member."""


def _patched_object(raw: bytes, values: dict[str, Any]) -> bytes:
    """`raw` (a snapshot object, as it sits in a list) with members set to JSON-ready values (or `_REMOVED`).

    An element in pydantic's own layout is rendered again from its parsed value (the same bytes the line-based
    patch of pydantic's layout would give, at C speed); any other layout (an imported file: other indents,
    tabs, CRLF, compact members) is patched exactly where its members are, every other byte kept.
    """
    parsed = pydantic_core.from_json(raw)
    if _rendered_element(parsed) == raw:
        for key, value in values.items():
            if value is _REMOVED:
                parsed.pop(key, None)
            else:
                parsed[key] = value
        return _rendered_element(parsed)
    for key, value in values.items():
        raw = _without_member(raw, key) if value is _REMOVED else _set_member(raw, key, value)
    return raw


def _rendered_element(value: Any) -> bytes:
    """A snapshot object as `dump_json(indent=2)` renders it inside a list."""
    return pydantic_core.to_json([value], indent=2)[4:-2]


def _without_member(raw: bytes, key: str) -> bytes:
    """`raw` (an object) without member `key` (every occurrence of it); nothing else changes."""
    while True:
        members = _members(raw, 0)
        found = [index for index, member in enumerate(members) if member[0] == key]
        if not found:
            return raw
        index = found[-1]
        if index + 1 < len(members):  # up to the next member's key: its comma goes too
            raw = raw[: members[index][1]] + raw[members[index + 1][1] :]
        elif index > 0:  # the last member: from the end of the one before, with the comma between them
            raw = raw[: members[index - 1][3]] + raw[members[index][3] :]
        else:
            raw = raw[: members[index][1]] + raw[members[index][3] :]


def _set_member(raw: bytes, key: str, value: Any) -> bytes:
    """`raw` (an object) with member `key` (every occurrence: a JSON reader takes the last) set to `value`,
    rendered at indent 2; nothing else changes."""
    rendered = pydantic_core.to_json(value, indent=2)
    spans = [(begin, end) for name, _, begin, end in _members(raw, 0) if name == key]
    for begin, end in reversed(spans):
        raw = raw[:begin] + rendered + raw[end:]
    if spans:
        return raw
    close = raw.rstrip().rindex(b'}')
    body_end = raw[:close].rstrip()
    separator = b',' if not body_end.endswith(b'{') else b''
    return body_end + separator + b'"' + key.encode() + b'": ' + rendered + raw[len(body_end) :]

"""The stored format (`layout`) on its own: segment keys, and every JSON layout of a snapshot list and element."""

from __future__ import annotations as _annotations

from datetime import UTC, datetime

import pydantic_core
import pytest

from pydantic_graph_s3.layout import (
    Claim,
    Element,
    decode_head,
    parse_segment_key,
    render_list,
    segment_key,
    split_list,
)


@pytest.mark.parametrize(
    ('key', 'parsed'),
    [
        ('runs/a~0123456789ab~00000001.json', ('a', '0123456789ab', 1)),
        (f'runs/r.1=x_-~{"f" * 32}~00000042.json', ('r.1=x_-', 'f' * 32, 42)),
        ('runs/a~0123456789ab~123456789.json', ('a', '0123456789ab', 123456789)),
        # Anything else under the prefix is not history this library wrote.
        ('runs/notes.txt~', None),
        ('runs/backup~2024.tar', None),
        ('runs/x~y/z.json', None),
        ('runs/p/q~0123456789ab~00000001.json', None),
        ('runs/a~0123456789ab~00000001.json.bak', None),
        ('runs/a~0123456789AB~00000001.json', None),
        ('runs/a~0123456789a~00000001.json', None),
        ('runs/a~0123456789ab~0000001.json', None),
        ('runs/a~0123456789ab~00000000.json', None),
        ('runs/a~0123456789ab~023456789.json', None),
        ('runs/..~0123456789ab~00000001.json', None),
        ('runs/~0123456789ab~00000001.json', None),
        ('runs/a~b~0123456789ab~00000001.json', None),
        ('other/a~0123456789ab~00000001.json', None),
        ('runs/a.json', None),
    ],
)
def test_parse_segment_key_recognises_exactly_the_keys_segment_key_writes(
    key: str, parsed: tuple[str, str, int] | None
) -> None:
    assert parse_segment_key('runs/', key) == parsed
    if parsed is not None:
        run_id, segment_id, seq = parsed
        assert segment_key(f'runs/{run_id}.json', segment_id, seq) == key


def test_parse_segment_key_at_the_bucket_root() -> None:
    assert parse_segment_key('', 'a~0123456789ab~00000001.json') == ('a', '0123456789ab', 1)
    assert parse_segment_key('', 'runs/a~0123456789ab~00000001.json') is None


CLAIM = Claim('t' * 32, datetime(2026, 1, 1, tzinfo=UTC), 1)


def _element(raw: bytes) -> Element:
    (element,) = split_list(b'[\n  ' + raw + b'\n]')
    return element


def test_patching_a_one_line_state_keeps_the_members_after_it() -> None:
    raw = (
        b'{\n    "state": {"counter": 1, "pad": ""},\n    "node": {\n      "node_id": "Pad"\n    },\n'
        b'    "start_ts": null,\n    "status": "created",\n    "kind": "node",\n    "id": "Pad:1"\n  }'
    )
    patched = _element(raw).patched(state={'counter': 2, 'pad': 'z'}, status='pending')
    assert pydantic_core.from_json(patched.raw) == {
        **pydantic_core.from_json(raw),
        'state': {'counter': 2, 'pad': 'z'},
        'status': 'pending',
    }
    assert b'"node": {\n      "node_id": "Pad"\n    },\n    "start_ts": null' in patched.raw, 'other bytes kept'


@pytest.mark.parametrize(
    'raw',
    [
        b'{"node": {"node_id": "Pad"}, "status": "pending", "kind": "node", "id": "Pad:1", "claim": {"token": "old", '
        b'"claimed_at": "2026-01-01T00:00:00Z", "attempt": 1}}',
        b'{\n    "node": {"node_id": "Pad"},\n    "status": "pending",\n    "kind": "node",\n    "id": "Pad:1",\n'
        b'    "claim": {"token": "old", "claimed_at": "2026-01-01T00:00:00Z", "attempt": 1}\n  }',
        b'{\r\n\t"claim": {"token": "old", "claimed_at": "2026-01-01T00:00:00Z", "attempt": 1},\r\n'
        b'\t"node": {"node_id": "Pad"},\r\n\t"status": "pending",\r\n\t"kind": "node",\r\n\t"id": "Pad:1"\r\n}',
    ],
    ids=['one-line', 'compact-members', 'tabs-crlf-claim-first'],
)
def test_a_compact_claim_is_replaced_and_removed_exactly(raw: bytes) -> None:
    original = pydantic_core.from_json(raw)
    replaced = _element(raw).patched(claim=CLAIM)
    assert replaced.claim == CLAIM and _element(replaced.raw).claim == CLAIM
    assert {k: v for k, v in pydantic_core.from_json(replaced.raw).items() if k != 'claim'} == {
        k: v for k, v in original.items() if k != 'claim'
    }
    removed = _element(raw).patched(status='created', claim=None)
    assert pydantic_core.from_json(removed.raw) == {
        **{k: v for k, v in original.items() if k != 'claim'},
        'status': 'created',
    }


def test_patching_pydantics_layout_is_rendering_it_again() -> None:
    element = _element(
        b'{\n    "node": {\n      "node_id": "Pad"\n    },\n    "status": "pending",\n    "kind": "node",\n'
        b'    "id": "Pad:1"\n  }'
    )
    patched = element.patched(status='running', claim=CLAIM)
    value = {**pydantic_core.from_json(element.raw), 'status': 'running'}
    value['claim'] = {'token': CLAIM.token, 'claimed_at': '2026-01-01T00:00:00Z', 'attempt': 1}
    assert patched.raw == pydantic_core.to_json([value], indent=2)[4:-2]


def test_a_repeated_key_is_patched_everywhere() -> None:
    raw = b'{"status": "created", "node": {"node_id": "Pad"}, "kind": "node", "id": "Pad:1", "status": "created"}'
    patched = _element(raw).patched(status='pending')
    assert patched.raw.count(b'"pending"') == 2 and _element(patched.raw).status == 'pending'


def test_a_list_that_only_looks_canonical_is_split_exactly() -> None:
    """Elements in other layouts, joined as this library joins them: the split by lines would cut them wrongly."""
    indented_1 = b'{\n "node": {\n  "node_id": "Pad"\n },\n "status": "success",\n "kind": "node",\n "id": "a"\n}'
    # Indented by 1, a list of objects in the state has exactly the separator of pydantic's layout inside it.
    nested = (
        b'{\n "state": [\n  {\n   "a": 1\n  },\n  {\n   "a": 2\n  }\n ],\n "node": {\n  "node_id": "Pad"\n },\n'
        b' "status": "success",\n "kind": "node",\n "id": "b"\n  }'
    )
    canonical = (
        b'{\n    "node": {\n      "node_id": "Pad"\n    },\n    "status": "created",\n    "kind": "node",\n'
        b'    "id": "c"\n  }'
    )
    for raws in ([indented_1, canonical], [canonical, indented_1, canonical], [nested, canonical], [canonical, nested]):
        body = render_list(raws)
        assert [e.raw for e in split_list(body)] == raws
    assert [
        e.id for e in split_list(b'[\n  ' + b',\n  '.join([canonical.replace(b'"c"', b'"d"'), canonical]) + b'\n]')
    ] == [
        'd',
        'c',
    ]


@pytest.mark.parametrize('member', ['sealed_segments', 'sealed_snapshots'])
def test_a_boolean_count_is_refused(member: str) -> None:
    element = b'{"node": {"node_id": "Pad"}, "status": "created", "kind": "node", "id": "Pad:1"}'
    counts = {'sealed_segments': 1, 'sealed_snapshots': 1, member: True}
    body = (
        b'{"pydantic_graph_s3": "segmented-1", "segment_id": "0123456789ab", "sealed_segments": '
        + pydantic_core.to_json(counts['sealed_segments'])
        + b', "sealed_snapshots": '
        + pydantic_core.to_json(counts['sealed_snapshots'])
        + b', "snapshots": ['
        + element
        + b']}'
    )
    with pytest.raises(ValueError, match='sealed_segments <= sealed_snapshots'):
        decode_head(body)


def test_a_boolean_attempt_is_refused() -> None:
    raw = b'{"node": {"node_id": "Pad"}, "status": "pending", "kind": "node", "id": "Pad:1", "claim": {"token": "t", '
    raw += b'"claimed_at": "2026-01-01T00:00:00Z", "attempt": true}}'
    with pytest.raises(ValueError, match='attempt is a boolean'):
        _element(raw)

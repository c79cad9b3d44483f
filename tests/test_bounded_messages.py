"""No message quotes a state key or value, and caller input is quoted cut to about 100 characters."""

from __future__ import annotations as _annotations

import json
from dataclasses import dataclass, field

import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3.layout import Element
from pydantic_graph_s3.persistence import graph_types
from pydantic_graph_s3.time_travel import SnapshotNotFoundError, StateValidationError, fork_head, validated_state
from pydantic_graph_s3.wire import InvalidEventError, StartDecoder, StartRequest


@dataclass
class Item:
    size: int


@dataclass
class KeyedState:
    counts: dict[str, int] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)


@dataclass
class Noop(BaseNode[KeyedState, None, int]):
    async def run(self, ctx: GraphRunContext[KeyedState]) -> End[int]:
        return End(0)


@dataclass
class Keyed(BaseNode[KeyedState, None, int]):
    sizes: dict[str, int] = field(default_factory=dict)

    async def run(self, ctx: GraphRunContext[KeyedState]) -> End[int]:
        return End(0)


keyed_graph = Graph(nodes=[Noop])
two_node_graph: Graph[KeyedState, None, int] = Graph(nodes=[Noop, Keyed])
SECRET = 'secret-' + 'k' * 100_000


def test_state_validation_names_the_field_path_never_a_key_or_value() -> None:
    with pytest.raises(StateValidationError) as refused:
        validated_state(keyed_graph, {'counts': {SECRET: SECRET}, 'items': [{'size': SECRET}], SECRET: 1})
    message = str(refused.value)
    assert 'secret' not in message and len(message) < 500
    assert 'counts.<...>' in message and 'items.0.size' in message
    assert '2 error(s)' in message


def test_state_validation_of_json_text_quotes_nothing_of_it() -> None:
    with pytest.raises(StateValidationError) as refused:
        validated_state(keyed_graph, json.dumps({'counts': {SECRET: SECRET}}))
    assert 'secret' not in str(refused.value) and len(str(refused.value)) < 500


def test_an_unknown_snapshot_id_is_quoted_cut_short() -> None:
    with pytest.raises(SnapshotNotFoundError) as missing:
        fork_head([], source_run_id='source', at='x' * 1_000_000, state=None, now=None)  # type: ignore[arg-type]
    assert len(str(missing.value)) < 400 and '1000000 characters' in str(missing.value)


def start_refusal(node: dict[str, object], state: object) -> str:
    request = StartRequest(action='start', run_id='r', node=node, state=state)
    with pytest.raises(InvalidEventError) as refused:
        StartDecoder(two_node_graph).decode(request)
    return str(refused.value)


def test_a_start_request_with_unknown_state_fields_counts_them_and_names_only_the_declared_fields() -> None:
    message = start_refusal({'node_id': 'Noop'}, {'counts': {}, SECRET: 1, 'countz': 2})
    assert 'secret' not in message and 'countz' not in message and len(message) < 300
    assert 'KeyedState has no field(s) for 2 of the given key(s)' in message
    assert 'its fields: counts, items' in message


def test_a_start_request_with_unknown_node_fields_quotes_none_of_them() -> None:
    message = start_refusal({'node_id': 'Keyed', SECRET: 1}, {})
    assert 'secret' not in message and len(message) < 300
    assert 'node: Keyed has no field(s) for 1 of the given key(s)' in message and 'its fields: sizes' in message


def test_a_start_request_state_that_fails_validation_shows_no_dict_key() -> None:
    message = start_refusal({'node_id': 'Noop'}, {'counts': {SECRET: SECRET}, 'items': [{'size': SECRET}]})
    assert 'secret' not in message and len(message) < 500
    assert 'state: counts.<...>' in message and 'items.0.size' in message


def test_a_start_request_node_that_fails_validation_shows_no_dict_key() -> None:
    message = start_refusal({'node_id': 'Keyed', 'sizes': {SECRET: SECRET}}, {})
    assert 'secret' not in message and len(message) < 300
    assert 'node: sizes.<...>' in message


def test_a_stored_snapshot_that_fails_validation_shows_no_dict_key() -> None:
    stored = {
        'kind': 'node',
        'id': 'Keyed:1',
        'status': 'created',
        'start_ts': None,
        'duration': None,
        'state': {'counts': {SECRET: SECRET}},
        'node': {'node_id': 'Keyed', 'sizes': {SECRET: SECRET}},
    }
    element = Element(json.dumps(stored).encode(), 'Keyed:1', 'node', 'created', 'Keyed')
    with pytest.raises(ValueError, match='validation error') as refused:
        graph_types(two_node_graph).snapshots([element])
    message = str(refused.value)
    assert 'secret' not in message and len(message) < 500
    # The path keeps the schema's own words (snapshot fields, the node id tag), only the keys are hidden.
    assert '0.node.state.counts.<...>' in message and '0.node.node.Keyed.sizes.<...>' in message

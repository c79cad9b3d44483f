"""No message quotes a state key or value, and caller input is quoted cut to about 100 characters."""

from __future__ import annotations as _annotations

import json
from dataclasses import dataclass, field

import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3.time_travel import SnapshotNotFoundError, StateValidationError, fork_head, validated_state


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


keyed_graph = Graph(nodes=[Noop])
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

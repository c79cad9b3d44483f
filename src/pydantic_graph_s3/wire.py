"""The worker's wire format: the requests a `GraphWorker` takes, the `StepResult` it answers, and decoding a
start request's node and state with the graph's types.

Every error here is an `InvalidEventError` that says which field is wrong and never quotes a value: events may
carry state, and their errors end in logs.
"""

from __future__ import annotations as _annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, TypeAdapter
from pydantic_graph import BaseNode
from pydantic_graph.graph import Graph

from pydantic_s3_cas import quoted

from ._messages import describe_validation_error, listed, schema_field_names
from .persistence import validate_run_id

__all__ = (
    'Status',
    'StepResult',
    'InvalidEventError',
    'RunNotFoundError',
    'StartRequest',
    'AdvanceRequest',
    'Request',
    'parse_request',
    'StartDecoder',
)

StateT = TypeVar('StateT')
DepsT = TypeVar('DepsT')
RunEndT = TypeVar('RunEndT')

Status = Literal['running', 'done', 'failed', 'busy']


class StepResult(BaseModel):
    """What a `start` or `advance` call did and where the run stands; the Lambda handler returns it as a dict.

    Every key is always present (`None` when it does not apply): the Step Functions definition selects them all.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    status: Status
    """`running`: there is a next step to run. `done`: the run ended (see `output`). `failed`: a node raised
    (see `error`). `busy`: another worker holds the current step; ask again later."""
    steps: int = 0
    """Steps run by this call."""
    next_node: str | None = None
    """Node id of the step to run next (`running`), or being run by another worker (`busy`)."""
    output: Any = None
    """The `End` data of a `done` run."""
    error: str | None = None
    """What went wrong in a `failed` run: the exception type and node, never its message (which may quote state
    values), e.g. `"ValueError: node CountDown failed (snapshot CountDown:...)"`."""
    created: bool | None = None
    """`start` only: whether this call created the run (`True`), or found it already there (`False`), in which
    case the state and node it was given were discarded. `None` for `advance`."""


class InvalidEventError(ValueError):
    """The event is not a request this worker understands; nothing was read or written."""


class RunNotFoundError(LookupError):
    """The run to advance does not exist (it was never started, or it expired)."""


RunId = Annotated[str, AfterValidator(validate_run_id)]


class StartRequest(BaseModel):
    """`{"action": "start", "run_id": ..., "node": {"node_id": ..., **fields}, "state": ...}`"""

    model_config = ConfigDict(extra='forbid')

    action: Literal['start']
    run_id: RunId
    node: dict[str, Any]
    """The first node, as snapshots store it: its `node_id` and its fields."""
    state: Any = None
    """The start state, validated against the graph's state type."""


class AdvanceRequest(BaseModel):
    """`{"action": "advance", "run_id": ...}`, optionally with `max_steps`."""

    model_config = ConfigDict(extra='forbid')

    action: Literal['advance']
    run_id: RunId
    max_steps: StrictInt | None = Field(default=None, ge=1)
    """An integer: `"1"`, `true` or `1.0` are refused, not guessed at."""


Request = StartRequest | AdvanceRequest
_REQUEST: TypeAdapter[Request] = TypeAdapter(Annotated[Request, Field(discriminator='action')])


def parse_request(body: object) -> Request:
    """The request in an event body, or `InvalidEventError` saying what is wrong with it."""
    if isinstance(body, Mapping) and 'action' not in body:
        raise InvalidEventError('invalid request: action: Field required (one of "start", "advance")')
    try:
        return _REQUEST.validate_python(body)
    except pydantic.ValidationError as e:
        raise InvalidEventError(f'invalid request: {describe_validation_error(e, own_schema=True)}') from None


class StartDecoder(Generic[StateT, DepsT, RunEndT]):
    """Turns a start request's `node` and `state` into the graph's node and state, refusing what would be lost."""

    def __init__(self, graph: Graph[StateT, DepsT, RunEndT]) -> None:
        self.graph = graph
        self._nodes = {node.get_node_id(): node for node in graph.get_nodes()}
        self._node_adapters: dict[str, TypeAdapter[Any]] = {}
        self._state_adapter: TypeAdapter[StateT] = TypeAdapter(graph.inferred_types[0])

    def decode(self, request: StartRequest) -> tuple[BaseNode[StateT, DepsT, RunEndT], StateT]:
        node_id = request.node.get('node_id')
        node_class = self._nodes.get(node_id) if isinstance(node_id, str) else None
        if node_class is None:
            known = ', '.join(sorted(self._nodes))
            raise InvalidEventError(
                f'invalid request: node: node_id {quoted(node_id)} is not a node of this graph ({known})'
            )
        fields = {k: v for k, v in request.node.items() if k != 'node_id'}
        # A typo in a field name would otherwise be dropped silently and the field take its default.
        _refuse_unknown_fields('node', node_class.get_node_id(), node_class, fields)
        state_type = self.graph.inferred_types[0]
        _refuse_unknown_fields('state', getattr(state_type, '__name__', 'the state'), state_type, request.state)
        node = _validated('node', self._node_adapter(node_class), fields)
        state = _validated('state', self._state_adapter, request.state)
        return node, state

    def _node_adapter(self, node_class: type[BaseNode[StateT, DepsT, RunEndT]]) -> TypeAdapter[Any]:
        node_id = node_class.get_node_id()
        if node_id not in self._node_adapters:
            self._node_adapters[node_id] = TypeAdapter(node_class)
        return self._node_adapters[node_id]


def _refuse_unknown_fields(what: str, type_name: str, declared: Any, data: object) -> None:
    """`InvalidEventError` if `data` has keys that validating it as `declared` would drop.

    The message counts the unknown keys and lists the type's own fields, never the keys: they are the caller's
    data (and unbounded), and the declared names are enough to spot a typo.
    """
    known = _declared_fields(declared)
    if known is None or not isinstance(data, Mapping):
        return
    if unknown := sum(1 for key in data if key not in known):
        fields = listed(sorted(known), limit=20) or 'none'
        raise InvalidEventError(
            f'invalid request: {what}: {type_name} has no field(s) for {unknown} of the given key(s)'
            f' (keys not shown; its fields: {fields})'
        )


def _validated(what: str, adapter: TypeAdapter[Any], data: object) -> Any:
    """`data` validated by `adapter`, or `InvalidEventError` without the values or dict keys (and `from None`: the
    pydantic error or a user's exception, shown with a traceback, would quote them)."""
    try:
        return adapter.validate_python(data)
    except pydantic.ValidationError as e:
        where = describe_validation_error(e, field_names=schema_field_names(adapter.core_schema))
        error = InvalidEventError(f'invalid request: {what}: {where}')
    except Exception as e:  # e.g. a TypeError from a __post_init__, which pydantic does not wrap
        error = InvalidEventError(
            f'invalid request: {what}: {type(e).__name__} (message not shown: it may quote values)'
        )
    raise error from None


def _declared_fields(declared: Any) -> set[str] | None:
    """The top-level keys that validating data as `declared` keeps, or None when it does not drop others.

    Only dataclasses and models that ignore extra keys (pydantic's default) drop them silently: a model with
    `extra='allow'` keeps them and one with `extra='forbid'` reports them itself. Other types are left to pydantic.
    """
    if not isinstance(declared, type):
        return None
    known: set[str] = set()
    if issubclass(declared, BaseModel):
        if declared.model_config.get('extra') in ('allow', 'forbid'):
            return None
        for name, info in declared.model_fields.items():
            aliases = {info.alias, info.validation_alias} - {None}
            if not all(isinstance(alias, str) for alias in aliases):
                return None  # AliasPath / AliasChoices: leave it to pydantic
            known |= {name, *(str(alias) for alias in aliases)}
        return known
    if dataclasses.is_dataclass(declared):
        if getattr(declared, '__pydantic_config__', {}).get('extra') in ('allow', 'forbid'):
            return None
        return {f.name for f in dataclasses.fields(declared) if f.init}
    return None

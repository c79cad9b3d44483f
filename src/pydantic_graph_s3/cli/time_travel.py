"""`runs fork|rollback|update-state`: time travel on a run, with the graph to check the state it writes."""

from __future__ import annotations as _annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic_graph.graph import Graph

from ..runs import RunStore
from ..time_travel import RunBusyError, SnapshotNotFoundError
from . import common
from .app import (
    BucketOption,
    Command,
    EndpointOption,
    ExitCode,
    GraphOption,
    PrefixOption,
    RunIdArgument,
    console,
    runs_app,
)

__all__ = ('fork_run', 'rollback_run', 'update_state')

T = TypeVar('T')

StateFileOption = Annotated[
    Path | None,
    typer.Option(
        '--state', exists=True, dir_okay=False, help="A JSON file: the state to start from, instead of the snapshot's."
    ),
]


@runs_app.command('fork', cls=Command)
def fork_run(
    run_id: RunIdArgument,
    at: Annotated[
        str,
        typer.Option(
            '--at', help='The node snapshot to fork at, or a unique start of its id (`runs show` lists the ids).'
        ),
    ],
    to: Annotated[str, typer.Option('--to', help='The new run id; an existing run is never overwritten.')],
    bucket: BucketOption,
    graph: GraphOption = None,
    prefix: PrefixOption = '',
    state: StateFileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Create a new run from a run's history before a snapshot, then a waiting copy of it; the source is only read."""
    store, loaded = common.store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(state)
    at = _snapshot_id(store, run_id, at)
    copy_id = _run_time_travel(lambda: store.fork_run(run_id, at=at, new_run_id=to, graph=loaded, state=replacement))
    console.print(f'forked {run_id} at {at} as {to}: its next step is snapshot {copy_id}')


@runs_app.command('rollback', cls=Command)
def rollback_run(
    run_id: RunIdArgument,
    to: Annotated[
        str,
        typer.Option(
            '--to', help='The node snapshot to continue from, or a unique start of its id (`runs show` lists them).'
        ),
    ],
    bucket: BucketOption,
    graph: GraphOption = None,
    prefix: PrefixOption = '',
    state: StateFileOption = None,
    etag: Annotated[
        str | None, typer.Option(help='Roll back only this version (an ETag from `runs show --json`).')
    ] = None,
    stale_after: Annotated[
        float, typer.Option('--stale-after', min=0.001, help='Seconds after which a claimed step counts as abandoned.')
    ] = 900.0,
    endpoint_url: EndpointOption = None,
) -> None:
    """Make a run continue from an earlier snapshot again: a waiting copy of it is appended, nothing is deleted."""
    store, loaded = common.store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(state)
    to = _snapshot_id(store, run_id, to)
    copy_id = _run_time_travel(
        lambda: store.rollback_run(
            run_id, to=to, graph=loaded, state=replacement, etag=etag, stale_after=timedelta(seconds=stale_after)
        )
    )
    console.print(f'rolled {run_id} back to {to}: its next step is snapshot {copy_id}')


@runs_app.command('update-state', cls=Command)
def update_state(
    run_id: RunIdArgument,
    path: Annotated[
        Path, typer.Argument(metavar='PATH', exists=True, dir_okay=False, help='A JSON file holding the new state.')
    ],
    bucket: BucketOption,
    graph: GraphOption = None,
    prefix: PrefixOption = '',
    etag: Annotated[
        str | None, typer.Option(help='Update only this version (an ETag from `runs show --json`).')
    ] = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Correct the state of a run's waiting step before a worker picks it up."""
    store, loaded = common.store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(path)
    snapshot_id = _run_time_travel(lambda: store.update_state(run_id, replacement, graph=loaded, etag=etag))
    console.print(f'updated the state of snapshot {snapshot_id} of {run_id}')


def _snapshot_id(store: RunStore, run_id: str, given: str) -> str:
    """The full id of the snapshot `given` names (a unique start of an id is enough), read from the run's history."""
    ids = [row.id for row in common.run(lambda: store.history(run_id)).snapshots]
    return common.snapshot_id(ids, run_id, given)


def _run_time_travel(work: Callable[[], Awaitable[T]]) -> T:
    """`common.run`, plus the refusals of time travel: an unknown snapshot (3) and a run busy or ended (5)."""
    try:
        return common.run(work)
    except SnapshotNotFoundError as e:
        common.fail(ExitCode.NOT_FOUND, str(e))
    except RunBusyError as e:
        common.fail(ExitCode.CONFLICT, str(e))


def _required_graph(spec: str | None) -> Graph[Any, Any, Any]:
    graph = common.load_graph(spec)
    if graph is None:
        raise typer.BadParameter(
            "the run's graph is needed to check the state: pass module:attribute", param_hint='--graph'
        )
    return graph


def _read_state(path: Path | None) -> bytes | None:
    """The state file's bytes (validated against the graph later, before anything is written)."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        common.fail(ExitCode.USAGE, f'cannot read {path}: {e.strerror}')

"""`runs list|show|export|import|delete|prune|recover|stats`: reading and managing the runs under a prefix."""

from __future__ import annotations as _annotations

import sys
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
import typer
from pydantic_graph.graph import Graph
from rich.table import Table
from rich.text import Text

from ..archive import write_file
from ..insight import run_html, run_mermaid, run_path
from ..persistence import recover_run
from ..runs import PruneOutcome, RunHistory, RunStore, RunSummary, SnapshotRow, format_duration
from ..time_travel import SnapshotNotFoundError
from . import common
from .app import (
    BucketOption,
    Command,
    EndpointOption,
    ExitCode,
    GraphOption,
    JsonOption,
    PrefixOption,
    RunIdArgument,
    StuckAfterOption,
    console,
    errors,
    runs_app,
)

__all__ = ('delete', 'export_run', 'import_run', 'list_runs', 'prune', 'recover', 'show', 'stats')


@runs_app.command('list', cls=Command)
def list_runs(
    bucket: BucketOption,
    prefix: PrefixOption = '',
    decode: Annotated[
        bool, typer.Option(help='Read each run (one GET each) for its snapshot count and last status.')
    ] = True,
    as_json: JsonOption = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """List the runs under the prefix."""
    store = common.store(bucket, prefix)

    async def collect() -> list[RunSummary]:
        found: list[RunSummary] = []
        with common.progress('listing runs') as advance:
            async for run in store.list_runs(decode=decode):
                found.append(run)
                advance()
        return found

    runs = common.run(collect, waiting=None)
    if as_json:
        common.print_json(runs)
        return
    if not runs:
        _hint_prefixes(store)
    table = Table(title=Text(f's3://{bucket}/{prefix} ({len(runs)} runs)'))
    for column in ('run id', 'snapshots', 'last status', 'ended', 'size', 'last modified'):
        table.add_column(column, overflow='fold')
    for run in runs:
        common.add_row(
            table,
            run.run_id,
            common.text(run.snapshots),
            run.problem or common.text(run.last_status),
            common.text(run.ended),
            f'{run.size} B',
            common.time(run.last_modified),
        )
    console.print(table)


@runs_app.command(cls=Command)
def show(
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    graph: GraphOption = None,
    as_json: JsonOption = False,
    mermaid: Annotated[
        bool, typer.Option('--mermaid', help="Print the graph's Mermaid state diagram with the run's path on it.")
    ] = False,
    html_file: Annotated[
        Path | None,
        typer.Option('--html', help='Write one self-contained HTML page: the diagram and the snapshot table.'),
    ] = None,
    stuck_after: StuckAfterOption = 900.0,
    overwrite: Annotated[bool, typer.Option(help='Replace the --html file if it exists.')] = False,
    wide: Annotated[
        bool, typer.Option('--wide', help='Never shorten a snapshot id: the table takes the width its cells need.')
    ] = False,
    snapshot: Annotated[
        str | None,
        typer.Option('--snapshot', help='Only this snapshot, in full, as JSON: its id or a unique start of it.'),
    ] = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show a run's snapshots: id, node, status, start and duration, and its result once ended."""
    store = common.store(bucket, prefix)
    decoded_with = common.load_graph(graph)
    history = common.run(lambda: store.history(run_id, decoded_with))
    if graph is not None:
        history = replace(history, decoded_with=graph)
    if mermaid or html_file is not None:
        _show_path(history, decoded_with, mermaid=mermaid, html=(html_file, overwrite), stuck_after=stuck_after)
        return
    if snapshot is not None:
        common.print_json(_snapshot_row(history, snapshot))
        return
    if as_json:
        common.print_json(_history_json(history))
        return
    shown = f'decoded with {history.decoded_with}' if history.decoded_with else 'raw JSON'
    table = Table(title=Text(f'run {run_id} ({shown})'))
    # An id is never folded onto two lines: shortened with a marker when the terminal is too narrow, and any
    # unique start of it is accepted where an id is (`--snapshot`, `fork --at`, `rollback --to`).
    shortened = not wide and console.width < _FULL_IDS_WIDTH
    table.add_column('snapshot id', no_wrap=True, overflow='ellipsis', max_width=_SHORT_ID if shortened else None)
    for column in ('node', 'state', 'status', 'start', 'duration'):
        table.add_column(column, overflow='fold')
    for row in history.snapshots:
        state = pydantic_core.to_json(row.state).decode()
        common.add_row(
            table,
            row.id,
            row.node or 'End',
            state,
            'superseded' if row.superseded else row.status,
            common.time(row.start),
            format_duration(row.duration),
        )
    console.print(table, width=_UNBOUNDED if wide else None)
    _print_origins(history)
    if history.ended:
        console.print(Text(f'result: {pydantic_core.to_json(history.result).decode()}'))
    else:
        console.print('not ended')


@runs_app.command('export', cls=Command)
def export_run(
    run_id: RunIdArgument,
    path: Annotated[
        Path, typer.Argument(metavar='PATH', help='The file to write, readable by FileStatePersistence(path).')
    ],
    bucket: BucketOption,
    prefix: PrefixOption = '',
    overwrite: Annotated[bool, typer.Option(help='Replace the file if it exists.')] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Write a run to a FileStatePersistence file."""
    store = common.store(bucket, prefix)
    common.run(lambda: store.export_run(run_id, path, overwrite=overwrite))
    console.print(Text(f'exported {run_id} ({path.stat().st_size} B) to {path}'))


@runs_app.command('import', cls=Command)
def import_run(
    path: Annotated[
        Path, typer.Argument(metavar='PATH', exists=True, dir_okay=False, help='A FileStatePersistence file.')
    ],
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    graph: GraphOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Store a FileStatePersistence file as a run; an existing run is never overwritten."""
    store = common.store(bucket, prefix)
    decoded_with = common.load_graph(graph)
    summary = common.run(lambda: store.import_run(path, run_id, decoded_with))
    console.print(Text(f'imported {path} as s3://{bucket}/{summary.key} ({summary.snapshots} snapshots)'))


@runs_app.command(cls=Command)
def delete(
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    etag: Annotated[
        str | None,
        typer.Option(help='Delete only this version (an ETag from `runs list --json`). Default: the version read now.'),
    ] = None,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='Do not ask for confirmation.')] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Delete a run, only if nobody writes it between the read (or the --etag given) and the delete."""
    store = common.store(bucket, prefix)
    if etag is None:
        run = common.run(lambda: store.get_run(run_id))
        etag = run.etag
        errors.print(Text(f'run {run_id}: {_described(run)}, last written {common.time(run.last_modified)}'))
    if not yes:
        common.confirm_or_decline(f'delete run {run_id}?', declined=f'run {run_id} not deleted')
    chosen = etag
    common.run(lambda: store.delete_run(run_id, etag=chosen))
    console.print(Text(f'deleted {run_id}'))


@runs_app.command(cls=Command)
def prune(
    bucket: BucketOption,
    ended_before: Annotated[
        str, typer.Option(help='Delete runs that ended before this ISO date or time (UTC unless it says otherwise).')
    ],
    prefix: PrefixOption = '',
    dry_run: Annotated[bool, typer.Option('--dry-run', help='Only show what would be deleted.')] = False,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='Do not ask for confirmation.')] = False,
    as_json: JsonOption = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Delete ended runs last written before a date; runs not ended, or written meanwhile, are kept."""
    cutoff = _parse_time(ended_before)
    store = common.store(bucket, prefix)
    if not dry_run and not yes:
        common.confirm_or_decline(
            f'delete the runs under s3://{bucket}/{prefix} that ended before {common.time(cutoff)}?',
            declined='nothing pruned',
        )

    async def collect() -> list[PruneOutcome]:
        outcomes: list[PruneOutcome] = []
        with common.progress('dry run' if dry_run else 'pruning') as advance:
            async for outcome in store.prune(ended_before=cutoff, dry_run=dry_run):
                outcomes.append(outcome)
                advance()
        return outcomes

    outcomes = common.run(collect, waiting=None)
    chosen = [o for o in outcomes if o.deleted or o.reason.startswith('would delete')]
    if as_json:
        common.print_json(outcomes)
        return
    table = Table(title=f'{"would delete" if dry_run else "deleted"}: {len(chosen)} of {len(outcomes)} runs')
    for column in ('run id', 'last modified', 'outcome'):
        table.add_column(column, overflow='fold')
    for outcome in outcomes:
        common.add_row(table, outcome.run.run_id, common.time(outcome.run.last_modified), outcome.reason)
    console.print(table)


@runs_app.command(cls=Command)
def recover(
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    graph: GraphOption = None,
    force: Annotated[
        bool,
        typer.Option(
            '--force',
            help='Recover even steps claimed by a worker without reclaim_after, which cannot be fenced: if that '
            'worker is only slow, not dead, the run forks. Only when you know it is gone.',
        ),
    ] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Make a run whose worker died mid-step runnable again at once: its claimed steps go back to `created`.

    The old holder's claim is revoked, so if it is alive after all, its writes are refused (`recover_run`). A step
    claimed without a token (by a worker without reclaim_after) is refused unless --force (exit 5).
    """
    store = common.store(bucket, prefix)
    persistence = store.persistence(run_id, common.load_graph(graph))
    released = common.run(lambda: recover_run(persistence, force=force))
    if not released:
        common.run(lambda: store.get_run(run_id))  # an unknown run is not found (exit 3), not "nothing to do"
        console.print(Text(f'recovered {run_id}: no step was claimed, nothing to do'))
        return
    console.print(Text(f'recovered {run_id}: {len(released)} step(s) runnable again: {", ".join(released)}'))


@runs_app.command('stats', cls=Command)
def stats(
    bucket: BucketOption,
    prefix: PrefixOption = '',
    stuck_after: StuckAfterOption = 900.0,
    remember: Annotated[
        bool,
        typer.Option(
            '--remember/--no-remember',
            help='Keep what was read in PREFIX~usage.json, so the next summary reads only runs that changed '
            '(--no-remember: read every run, write nothing).',
        ),
    ] = True,
    as_json: JsonOption = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Usage summary: runs by status, objects and bytes per run, snapshots per run, the oldest unfinished run."""
    store = common.store(bucket, prefix)
    summary = common.run(lambda: store.stats(stuck_after=timedelta(seconds=stuck_after), remember=remember))
    if as_json:
        common.print_json(summary)
        return
    by_status = ', '.join(f'{count} {status}' for status, count in summary.by_status.items())
    console.print(f's3://{bucket}/{prefix}: {summary.runs} runs ({by_status})')
    table = Table(title='per run')
    for column in ('', 'total', 'p50', 'p90', 'p99', 'max'):
        table.add_column(column, justify='right')
    for name, spread in (('objects', summary.objects), ('bytes', summary.bytes), ('snapshots', summary.snapshots)):
        table.add_row(name, *(str(value) for value in astuple(spread)))
    console.print(table)
    if summary.oldest_active is not None:
        oldest = summary.oldest_active
        written = common.time(oldest.last_written)
        console.print(f'oldest unfinished run: {oldest.run_id} ({oldest.status}), last written {written}')
    if summary.headless_objects:
        console.print(
            f'{summary.headless_objects} objects ({summary.headless_bytes} B) belong to runs whose head is gone'
        )
    if summary.memo_entries_skipped:
        console.print(
            f'{summary.memo_entries_skipped} invalid entries of the usage memo were left out and their runs read'
            ' again (the memo is written over)'
        )
    console.print(f'{summary.requests} requests')


_FULL_IDS_WIDTH = 130
"""Below this width, `runs show` shortens snapshot ids (unless `--wide`), so the other columns have room."""
_SHORT_ID = 24
"""A shortened id: the node's name and enough of the random part to tell the run's snapshots apart."""
_UNBOUNDED = 10_000
"""`--wide`: a width no table reaches, so none of its cells is shortened."""


def _snapshot_row(history: RunHistory, given: str) -> SnapshotRow:
    """`runs show --snapshot`: the row of the snapshot `given` names (a unique start of its id is enough)."""
    chosen = common.snapshot_id([row.id for row in history.snapshots], history.run_id, given)
    for row in history.snapshots:
        if row.id == chosen:
            return row
    common.fail(ExitCode.NOT_FOUND, str(SnapshotNotFoundError(history.run_id, given)))


def _described(run: RunSummary) -> str:
    """What `delete` says of the run it is about to delete: its snapshots and whether it ended, or why unreadable."""
    if run.problem is not None:
        return f'unreadable ({run.problem})'
    return f'{run.snapshots} snapshots, ' + ('ended' if run.ended else f'NOT ended (last status: {run.last_status})')


def _hint_prefixes(store: RunStore) -> None:
    """Under an empty listing, say which deeper prefixes hold runs (the demo writes under graph-runs/)."""
    found = common.run(lambda: store.prefixes_with_runs())
    if found:
        shown = ', '.join(found)
        errors.print(Text(f'hint: no runs directly under this prefix; runs may be under {shown}: pass --prefix'))


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise typer.BadParameter(f'{value!r} is not an ISO date or time', param_hint='--ended-before') from e
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _show_path(
    history: RunHistory,
    graph: Graph[Any, Any, Any] | None,
    *,
    mermaid: bool,
    html: tuple[Path | None, bool],
    stuck_after: float,
) -> None:
    """`runs show --mermaid` and `--html`: the run's path on its graph (the diagram needs `--graph`)."""
    path = run_path(history, stuck_after=timedelta(seconds=stuck_after))
    html_file, overwrite = html
    with common.user_errors():
        if mermaid:
            if graph is None:
                raise typer.BadParameter("the diagram is of the run's graph: pass --graph module:attribute")
            sys.stdout.write(run_mermaid(graph, history, path) + '\n')
        if html_file is not None:
            page = run_html(graph, history, path)
            write_file(html_file, page.encode(), overwrite)
            errors.print(f'wrote {html_file}' + ('' if graph is not None else ' (no diagram: pass --graph)'))


def _print_origins(history: RunHistory) -> None:
    """Say where the snapshots a fork or a rollback made came from (a rolled-back run shows it here)."""
    for row in history.snapshots:
        if row.copy_of is not None:
            origin = row.copy_of
            source = 'this run' if origin.run_id == history.run_id else f'run {origin.run_id}'
            console.print(f'snapshot {row.id}: {origin.reason} to snapshot {origin.snapshot_id} of {source}')


def _history_json(history: RunHistory) -> dict[str, Any]:
    return {
        'run_id': history.run_id,
        'key': history.key,
        'etag': history.etag,
        'decoded_with': history.decoded_with,
        'ended': history.ended,
        'result': history.result,
        'snapshots': history.snapshots,
    }

"""The `pydantic-graph-s3` command line: the demo, and operating the runs stored in a bucket.

User mistakes (a missing or invalid bucket, missing or rejected credentials, an unknown run, a run changed
meanwhile, a path that cannot be written, a `--graph` that cannot be imported) end with one line on stderr and an
exit code from `ExitCode`, never a traceback. Error text is never read as rich markup: it may hold brackets.
"""

from __future__ import annotations as _annotations

import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text
    from typer.core import TyperArgument, TyperCommand
except ImportError as e:  # pragma: no cover - only without the [cli] extra
    raise SystemExit("the pydantic-graph-s3 command needs its extra: pip install 'pydantic-graph-s3[cli]'") from e

import anyio
import pydantic_core
from pydantic_graph.graph import Graph

from pydantic_s3_cas import (
    AccessDeniedError,
    BucketNotFoundError,
    ConditionalWritesUnsupportedError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    S3PersistenceError,
    validate_bucket_name,
    verify_conditional_writes,
)

from .demo import DemoOptions, run_demo
from .insight import run_html, run_mermaid, run_path
from .packaging import Architecture, LambdaPackage, PackagingError, build_lambda_package
from .persistence import UnfencedClaimError, recover_run
from .runs import PruneOutcome, RunHistory, RunStore, RunSummary, format_duration
from .time_travel import RunBusyError, SnapshotNotFoundError

__all__ = ('app', 'main', 'ExitCode')

T = TypeVar('T')


class ExitCode(IntEnum):
    """What the command's exit status means (2 is also click's own code for bad usage)."""

    OK = 0
    S3_ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    ACCESS = 4
    CONFLICT = 5
    UNREACHABLE = 6
    UNSAFE_ENDPOINT = 7
    DECLINED = 8
    """A confirmation was answered no, or could not be asked (no terminal, no --yes): nothing was changed."""


class _Command(TyperCommand):
    """Usage lines name the arguments as their help does, `RUN_ID PATH`: recent Typer writes `{RUN_ID} {PATH}`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # `ctx` is click's Context, which Typer 0.29 vendors (typer._click) and older versions import.
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            pieces.extend([_usage_name(param)] if isinstance(param, TyperArgument) else param.get_usage_pieces(ctx))
        return pieces


def _usage_name(argument: TyperArgument) -> str:
    """`PATH`, `[PATH]` when optional, `PATH...` when repeatable: click's own style."""
    name = argument.metavar or (argument.name or '').upper()
    if argument.nargs != 1:
        name += '...'
    return name if argument.required else f'[{name}]'


app = typer.Typer(
    help='pydantic-graph runs stored in S3 with compare-and-swap writes.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_app = typer.Typer(help='Inspect and manage the runs stored under a bucket and prefix.', no_args_is_help=True)
app.add_typer(runs_app, name='runs')


def _console(*, stderr: bool) -> Console:
    """Not on a terminal (and no COLUMNS), nothing is wrapped or folded at 80 columns: a folded URI or snapshot
    id cannot be copied, and tables take only the width their cells need."""
    console = Console(stderr=stderr, soft_wrap=True, highlight=False)
    if not console.is_terminal and 'COLUMNS' not in os.environ:
        console.width = 10_000
    return console


console = _console(stderr=False)
errors = _console(stderr=True)

BucketOption = Annotated[
    str, typer.Option('--bucket', envvar='PYDANTIC_GRAPH_S3_BUCKET', help='The bucket holding the runs.')
]
PrefixOption = Annotated[
    str, typer.Option('--prefix', envvar='PYDANTIC_GRAPH_S3_PREFIX', help='Key prefix of the run objects.')
]
GraphOption = Annotated[
    str | None,
    typer.Option(
        '--graph',
        help="The run's graph as module:attribute, to decode nodes and state with its types.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option('--json', help='Machine-readable JSON on stdout.')]
StuckAfterOption = Annotated[
    float,
    typer.Option('--stuck-after', min=0.001, help='Seconds a claimed step may take before it counts as stuck.'),
]
RunIdArgument = Annotated[
    str, typer.Argument(metavar='RUN_ID', help='The run id (its object is PREFIX + RUN_ID + .json).')
]


@app.callback()
def _root() -> None:
    """pydantic-graph runs stored in S3 with compare-and-swap writes."""


@app.command(cls=_Command)
def demo(
    bucket: Annotated[
        str | None,
        typer.Option(help='A real bucket, used through the standard AWS configuration. Default: embedded S3.'),
    ] = None,
    prefix: Annotated[str, typer.Option(help='Key prefix of the run objects.')] = 'graph-runs/',
    counter: Annotated[int, typer.Option(min=0, max=1000, help='Where the count-down starts.')] = 5,
    run_id: Annotated[str | None, typer.Option(help='Run id (default: a new one).')] = None,
) -> None:
    """Run pydantic-graph's count-down one step per simulated invocation, each with a fresh persistence."""
    if bucket is not None:
        _checked_bucket(bucket)
    with _user_errors():
        output = run_demo(DemoOptions(bucket=bucket, prefix=prefix, counter=counter, run_id=run_id), console)
    console.print(Text.assemble(('run finished', 'green'), f' with output {output}'))


@app.command(cls=_Command)
def package(
    output: Annotated[Path, typer.Option(help='The .zip to write.')] = Path('build/lambda.zip'),
    include: Annotated[
        list[Path] | None, typer.Option(help='A handler module or package to put at the root (repeatable).')
    ] = None,
    requirement: Annotated[list[str] | None, typer.Option(help='What the handler needs besides this library.')] = None,
    architecture: Annotated[str, typer.Option(help='The function architecture: arm64 or x86_64.')] = 'arm64',
    python_version: Annotated[str, typer.Option(help='The Lambda runtime Python version.')] = '3.12',
    pip_option: Annotated[list[str] | None, typer.Option(help='An extra pip option, e.g. --index-url=URL.')] = None,
) -> None:
    """Build a Lambda deployment package: this library, its dependencies for Lambda, and your handler module."""
    if architecture not in ('arm64', 'x86_64'):
        raise typer.BadParameter('architecture must be arm64 or x86_64', param_hint='--architecture')
    arch: Architecture = 'arm64' if architecture == 'arm64' else 'x86_64'
    spec = LambdaPackage(
        output=output,
        include=include or [],
        requirements=requirement or [],
        architecture=arch,
        python_version=python_version,
        pip_options=pip_option or [],
    )
    with console.status(f'installing the dependencies for {arch}, Python {python_version}...'):
        try:
            built = build_lambda_package(spec)
        except PackagingError as e:
            console.print(Text(str(e), style='red'))
            raise typer.Exit(1) from e
    console.print(Text.assemble(('built', 'green'), f' {built} ({built.stat().st_size / 1e6:.1f} MB)'))


@runs_app.command('list', cls=_Command)
def list_runs(
    bucket: BucketOption,
    prefix: PrefixOption = '',
    decode: Annotated[
        bool, typer.Option(help='Read each run (one GET each) for its snapshot count and last status.')
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """List the runs under the prefix."""
    store = _store(bucket, prefix)

    async def collect() -> list[RunSummary]:
        found: list[RunSummary] = []
        with _progress('listing runs') as advance:
            async for run in store.list_runs(decode=decode):
                found.append(run)
                advance()
        return found

    runs = _run(collect)
    if as_json:
        _print_json(runs)
        return
    if not runs:
        _hint_prefixes(store)
    table = Table(title=Text(f's3://{bucket}/{prefix} ({len(runs)} runs)'))
    for column in ('run id', 'snapshots', 'last status', 'ended', 'size', 'last modified'):
        table.add_column(column, overflow='fold')
    for run in runs:
        _add_row(
            table,
            run.run_id,
            _text(run.snapshots),
            run.problem or _text(run.last_status),
            _text(run.ended),
            f'{run.size} B',
            _time(run.last_modified),
        )
    console.print(table)


@runs_app.command(cls=_Command)
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
) -> None:
    """Show a run's snapshots: id, node, status, start and duration, and its result once ended."""
    store = _store(bucket, prefix)
    decoded_with = _load_graph(graph)
    history = _run(lambda: store.history(run_id, decoded_with))
    if graph is not None:
        history = replace(history, decoded_with=graph)
    if mermaid or html_file is not None:
        _show_path(history, decoded_with, mermaid=mermaid, html_file=html_file, stuck_after=stuck_after)
        return
    if as_json:
        _print_json(_history_json(history))
        return
    shown = f'decoded with {history.decoded_with}' if history.decoded_with else 'raw JSON'
    table = Table(title=Text(f'run {run_id} ({shown})'))
    for column in ('snapshot id', 'node', 'state', 'status', 'start', 'duration'):
        table.add_column(column, overflow='fold')
    for row in history.snapshots:
        state = pydantic_core.to_json(row.state).decode()
        _add_row(table, row.id, row.node or 'End', state, row.status, _time(row.start), format_duration(row.duration))
    console.print(table)
    _print_origins(history)
    if history.ended:
        console.print(Text(f'result: {pydantic_core.to_json(history.result).decode()}'))
    else:
        console.print('not ended')


@runs_app.command('export', cls=_Command)
def export_run(
    run_id: RunIdArgument,
    path: Annotated[
        Path, typer.Argument(metavar='PATH', help='The file to write, readable by FileStatePersistence(path).')
    ],
    bucket: BucketOption,
    prefix: PrefixOption = '',
    overwrite: Annotated[bool, typer.Option(help='Replace the file if it exists.')] = False,
) -> None:
    """Write a run to a FileStatePersistence file."""
    store = _store(bucket, prefix)
    summary = _run(lambda: store.export_run(run_id, path, overwrite=overwrite))
    console.print(Text(f'exported {run_id} ({summary.size} B) to {path}'))


@runs_app.command('import', cls=_Command)
def import_run(
    path: Annotated[
        Path, typer.Argument(metavar='PATH', exists=True, dir_okay=False, help='A FileStatePersistence file.')
    ],
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    graph: GraphOption = None,
) -> None:
    """Store a FileStatePersistence file as a run; an existing run is never overwritten."""
    store = _store(bucket, prefix)
    decoded_with = _load_graph(graph)
    summary = _run(lambda: store.import_run(path, run_id, decoded_with))
    console.print(Text(f'imported {path} as s3://{bucket}/{summary.key} ({summary.snapshots} snapshots)'))


@runs_app.command(cls=_Command)
def delete(
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    etag: Annotated[
        str | None,
        typer.Option(help='Delete only this version (an ETag from `runs list --json`). Default: the version read now.'),
    ] = None,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='Do not ask for confirmation.')] = False,
) -> None:
    """Delete a run, only if nobody writes it between the read (or the --etag given) and the delete."""
    store = _store(bucket, prefix)
    if etag is None:
        run = _run(lambda: store.get_run(run_id))
        etag = run.etag
        state = 'ended' if run.ended else f'NOT ended (last status: {run.last_status})'
        errors.print(Text(f'run {run_id}: {run.snapshots} snapshots, {state}, last written {_time(run.last_modified)}'))
    if not yes:
        _confirm_or_decline(f'delete run {run_id}?', declined=f'run {run_id} not deleted')
    chosen = etag
    _run(lambda: store.delete_run(run_id, etag=chosen))
    console.print(Text(f'deleted {run_id}'))


@runs_app.command(cls=_Command)
def prune(
    bucket: BucketOption,
    ended_before: Annotated[
        str, typer.Option(help='Delete runs that ended before this ISO date or time (UTC unless it says otherwise).')
    ],
    prefix: PrefixOption = '',
    dry_run: Annotated[bool, typer.Option('--dry-run', help='Only show what would be deleted.')] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete ended runs last written before a date; runs not ended, or written meanwhile, are kept."""
    cutoff = _parse_time(ended_before)
    store = _store(bucket, prefix)

    async def collect() -> list[PruneOutcome]:
        outcomes: list[PruneOutcome] = []
        with _progress('dry run' if dry_run else 'pruning') as advance:
            async for outcome in store.prune(ended_before=cutoff, dry_run=dry_run):
                outcomes.append(outcome)
                advance()
        return outcomes

    outcomes = _run(collect)
    chosen = [o for o in outcomes if o.deleted or o.reason.startswith('would delete')]
    if as_json:
        _print_json(outcomes)
        return
    table = Table(title=f'{"would delete" if dry_run else "deleted"}: {len(chosen)} of {len(outcomes)} runs')
    for column in ('run id', 'last modified', 'outcome'):
        table.add_column(column, overflow='fold')
    for outcome in outcomes:
        _add_row(table, outcome.run.run_id, _time(outcome.run.last_modified), outcome.reason)
    console.print(table)


@runs_app.command(cls=_Command)
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
) -> None:
    """Make a run whose worker died mid-step runnable again at once: its claimed steps go back to `created`.

    The old holder's claim is revoked, so if it is alive after all, its writes are refused (`recover_run`). A step
    claimed without a token (by a worker without reclaim_after) is refused unless --force (exit 5).
    """
    persistence = _store(bucket, prefix).persistence(run_id, _load_graph(graph))
    released = _run(lambda: recover_run(persistence, force=force))
    if not released:
        console.print(Text(f'recovered {run_id}: no step was claimed, nothing to do'))
        return
    console.print(Text(f'recovered {run_id}: {len(released)} step(s) runnable again: {", ".join(released)}'))


@runs_app.command('stats', cls=_Command)
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
) -> None:
    """Usage summary: runs by status, objects and bytes per run, snapshots per run, the oldest unfinished run."""
    store = _store(bucket, prefix)
    summary = _run(lambda: store.stats(stuck_after=timedelta(seconds=stuck_after), remember=remember))
    if as_json:
        _print_json(summary)
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
        console.print(
            f'oldest unfinished run: {oldest.run_id} ({oldest.status}), last written {_time(oldest.last_written)}'
        )
    if summary.headless_objects:
        console.print(
            f'{summary.headless_objects} objects ({summary.headless_bytes} B) belong to runs whose head is gone'
        )
    console.print(f'{summary.requests} requests')


StateFileOption = Annotated[
    Path | None,
    typer.Option(
        '--state', exists=True, dir_okay=False, help="A JSON file: the state to start from, instead of the snapshot's."
    ),
]


@runs_app.command('fork', cls=_Command)
def fork_run(
    run_id: RunIdArgument,
    at: Annotated[str, typer.Option('--at', help='The node snapshot to fork at (`runs show` lists the ids).')],
    to: Annotated[str, typer.Option('--to', help='The new run id; an existing run is never overwritten.')],
    bucket: BucketOption,
    graph: GraphOption = None,
    prefix: PrefixOption = '',
    state: StateFileOption = None,
) -> None:
    """Create a new run from a run's history before a snapshot, then a waiting copy of it; the source is only read."""
    store, loaded = _store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(state)
    copy_id = _run_time_travel(lambda: store.fork_run(run_id, at=at, new_run_id=to, graph=loaded, state=replacement))
    console.print(f'forked {run_id} at {at} as {to}: its next step is snapshot {copy_id}')


@runs_app.command('rollback', cls=_Command)
def rollback_run(
    run_id: RunIdArgument,
    to: Annotated[str, typer.Option('--to', help='The node snapshot to continue from (`runs show` lists the ids).')],
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
) -> None:
    """Make a run continue from an earlier snapshot again: a waiting copy of it is appended, nothing is deleted."""
    store, loaded = _store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(state)
    copy_id = _run_time_travel(
        lambda: store.rollback_run(
            run_id, to=to, graph=loaded, state=replacement, etag=etag, stale_after=timedelta(seconds=stale_after)
        )
    )
    console.print(f'rolled {run_id} back to {to}: its next step is snapshot {copy_id}')


@runs_app.command('update-state', cls=_Command)
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
) -> None:
    """Correct the state of a run's waiting step before a worker picks it up."""
    store, loaded = _store(bucket, prefix), _required_graph(graph)
    replacement = _read_state(path)
    snapshot_id = _run_time_travel(lambda: store.update_state(run_id, replacement, graph=loaded, etag=etag))
    console.print(f'updated the state of snapshot {snapshot_id} of {run_id}')


@app.command('check-endpoint', cls=_Command)
def check_endpoint(bucket: BucketOption, prefix: PrefixOption = '', as_json: JsonOption = False) -> None:
    """Check that the endpoint honours If-Match and If-None-Match, on a probe object it then deletes."""
    _checked_bucket(bucket)
    endpoint = _run(lambda: verify_conditional_writes(bucket, prefix))
    if as_json:
        _print_json({'bucket': bucket, 'prefix': prefix, 'endpoint': endpoint, 'conditional_writes': True})
        return
    console.print(Text(f'conditional writes honoured at s3://{bucket}/{prefix}: {endpoint}'))


def main() -> None:
    # The error line says what the storage layer's warning would: one message, not two.
    for name in ('pydantic_graph_s3', 'pydantic_s3_cas'):
        logging.getLogger(name).addHandler(logging.NullHandler())
    app()


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on a fresh event loop, turning the errors users cause into a message and an exit code."""
    with _user_errors():
        return anyio.run(work)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except (ObjectNotFoundError, BucketNotFoundError) as e:
        _fail(ExitCode.NOT_FOUND, str(e))
    except (CredentialsError, AccessDeniedError) as e:
        _fail(ExitCode.ACCESS, str(e))
    except (ObjectChangedError, ObjectExistsError, FileExistsError, UnfencedClaimError) as e:
        _fail(ExitCode.CONFLICT, str(e))
    except EndpointUnreachableError as e:
        _fail(ExitCode.UNREACHABLE, str(e))
    except ConditionalWritesUnsupportedError as e:
        _fail(ExitCode.UNSAFE_ENDPOINT, str(e))
    except S3PersistenceError as e:
        _fail(ExitCode.S3_ERROR, str(e))
    except ValueError as e:  # an invalid run id or bucket name, or a file that is not a snapshot list
        _fail(ExitCode.USAGE, str(e))
    except OSError as e:  # a local path that cannot be written or read: its message names it
        _fail(ExitCode.USAGE, e.strerror if e.strerror and e.filename is None else str(e))


def _store(bucket: str, prefix: str) -> RunStore:
    checked = _checked_bucket(bucket)
    with _user_errors():  # a prefix that is not a folder
        return RunStore(checked, prefix)


def _checked_bucket(bucket: str) -> str:
    """The bucket name, checked before any request (the same rules as the library's)."""
    if not bucket:
        _fail(ExitCode.USAGE, 'no bucket: pass --bucket or set PYDANTIC_GRAPH_S3_BUCKET')
    with _user_errors():
        return validate_bucket_name(bucket)


def _fail(code: ExitCode, message: str) -> NoReturn:
    """One line on stderr, then exit with `code`; `message` is shown as it is, never parsed as markup."""
    errors.print(Text.assemble(('error:', 'red'), ' ', ' '.join(message.split('\n'))))
    raise typer.Exit(code)


def _confirm_or_decline(question: str, *, declined: str) -> None:
    """Ask on the terminal; a no, or no terminal to ask on, ends the command with `ExitCode.DECLINED`."""
    if not sys.stdin.isatty():
        _declined(f'{declined}: no terminal to confirm on; pass --yes to confirm')
    try:
        confirmed = typer.confirm(question, default=False, err=True)
    except typer.Abort:  # end of input (Ctrl-D) or Ctrl-C at the prompt
        confirmed = False
    if not confirmed:
        _declined(declined)


def _declined(message: str) -> NoReturn:
    errors.print(Text(message))
    raise typer.Exit(ExitCode.DECLINED)


def _hint_prefixes(store: RunStore) -> None:
    """Under an empty listing, say which deeper prefixes hold runs (the demo writes under graph-runs/)."""
    found = _run(lambda: store.prefixes_with_runs())
    if found:
        shown = ', '.join(found)
        errors.print(Text(f'hint: no runs directly under this prefix; runs may be under {shown}: pass --prefix'))


def _load_graph(spec: str | None) -> Graph[Any, Any, Any] | None:
    """The graph named by `module:attribute`; the module is found on the path, then in the current directory.

    The current directory comes last on `sys.path`, so a file there named like a library the command uses
    (`s3transfer.py`) does not replace it. Whatever importing the module raises, even `SystemExit`, is a usage
    error with one line on stderr.
    """
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(':')
    if not module_name or not attribute:
        _fail(ExitCode.USAGE, f'--graph {spec!r} is not module:attribute')
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        graph = getattr(importlib.import_module(module_name), attribute)
    except (Exception, SystemExit) as e:
        first_line = str(e).splitlines()[0] if str(e) else ''
        _fail(ExitCode.USAGE, f'--graph: cannot load {spec}: {type(e).__name__}: {first_line}')
    if not isinstance(graph, Graph):
        _fail(ExitCode.USAGE, f'--graph: {spec} is a {type(graph).__name__}, not a pydantic_graph.Graph')
    return graph


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise typer.BadParameter(f'{text!r} is not an ISO date or time', param_hint='--ended-before') from e
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[], None]]:
    """A spinner with a count on stderr (drawn only on a terminal), advanced once per run."""
    columns = (SpinnerColumn(), TextColumn('{task.description}: {task.completed} runs'), TimeElapsedColumn())
    # Off a terminal it would draw nothing but leave a blank line on stderr.
    with Progress(*columns, console=errors, transient=True, disable=not errors.is_terminal) as progress:
        task = progress.add_task(description, total=None)
        yield lambda: progress.advance(task)


def _show_path(
    history: RunHistory,
    graph: Graph[Any, Any, Any] | None,
    *,
    mermaid: bool,
    html_file: Path | None,
    stuck_after: float,
) -> None:
    """`runs show --mermaid` and `--html`: the run's path on its graph (the diagram needs `--graph`)."""
    path = run_path(history, stuck_after=timedelta(seconds=stuck_after))
    with _user_errors():
        if mermaid:
            if graph is None:
                raise typer.BadParameter("the diagram is of the run's graph: pass --graph module:attribute")
            sys.stdout.write(run_mermaid(graph, history, path) + '\n')
        if html_file is not None:
            page = run_html(graph, history, path)
            _write_text(html_file, page)
            errors.print(f'wrote {html_file}' + ('' if graph is not None else ' (no diagram: pass --graph)'))


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding='utf-8')
    except OSError as e:
        _fail(ExitCode.USAGE, f'cannot write {path}: {e.strerror}')


def _print_origins(history: RunHistory) -> None:
    """Say where the snapshots a fork or a rollback made came from (a rolled-back run shows it here)."""
    for row in history.snapshots:
        if row.copy_of is not None:
            origin = row.copy_of
            source = 'this run' if origin.run_id == history.run_id else f'run {origin.run_id}'
            console.print(f'snapshot {row.id}: {origin.reason} to snapshot {origin.snapshot_id} of {source}')


def _run_time_travel(work: Callable[[], Awaitable[T]]) -> T:
    """`_run`, plus the refusals of time travel: an unknown snapshot (3) and a run busy or ended (5)."""
    try:
        return _run(work)
    except SnapshotNotFoundError as e:
        _fail(ExitCode.NOT_FOUND, str(e))
    except RunBusyError as e:
        _fail(ExitCode.CONFLICT, str(e))


def _required_graph(spec: str | None) -> Graph[Any, Any, Any]:
    graph = _load_graph(spec)
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
        _fail(ExitCode.USAGE, f'cannot read {path}: {e.strerror}')


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


def _print_json(value: Any) -> None:
    sys.stdout.write(pydantic_core.to_json(value, indent=2).decode() + '\n')


def _add_row(table: Table, *cells: str) -> None:
    """Cells are shown as they are: a run id, state or reason with brackets is not rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def _text(value: object) -> str:
    return '' if value is None else str(value)


def _time(value: datetime | None) -> str:
    return '' if value is None else value.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')

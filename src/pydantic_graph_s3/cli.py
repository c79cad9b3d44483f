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
from dataclasses import replace
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text
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
from .packaging import Architecture, LambdaPackage, PackagingError, build_lambda_package
from .persistence import recover_run
from .runs import PruneOutcome, RunHistory, RunStore, RunSummary, format_duration

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
RunIdArgument = Annotated[
    str, typer.Argument(metavar='RUN_ID', help='The run id (its object is PREFIX + RUN_ID + .json).')
]


@app.callback()
def _root() -> None:
    """pydantic-graph runs stored in S3 with compare-and-swap writes."""


@app.command()
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


@app.command()
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


@runs_app.command('list')
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


@runs_app.command()
def show(
    run_id: RunIdArgument,
    bucket: BucketOption,
    prefix: PrefixOption = '',
    graph: GraphOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's snapshots: id, node, status, start and duration, and its result once ended."""
    store = _store(bucket, prefix)
    decoded_with = _load_graph(graph)
    history = _run(lambda: store.history(run_id, decoded_with))
    if graph is not None:
        history = replace(history, decoded_with=graph)
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
    if history.ended:
        console.print(Text(f'result: {pydantic_core.to_json(history.result).decode()}'))
    else:
        console.print('not ended')


@runs_app.command('export')
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


@runs_app.command('import')
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


@runs_app.command()
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


@runs_app.command()
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


@runs_app.command()
def recover(run_id: RunIdArgument, bucket: BucketOption, prefix: PrefixOption = '', graph: GraphOption = None) -> None:
    """Make a run whose worker died mid-step runnable again at once: its claimed steps go back to `created`.

    The old holder's claim is revoked, so if it is alive after all, its writes are refused (`recover_run`).
    """
    persistence = _store(bucket, prefix).persistence(run_id, _load_graph(graph))
    released = _run(lambda: recover_run(persistence))
    if not released:
        console.print(Text(f'recovered {run_id}: no step was claimed, nothing to do'))
        return
    console.print(Text(f'recovered {run_id}: {len(released)} step(s) runnable again: {", ".join(released)}'))


@app.command('check-endpoint')
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
    except (ObjectChangedError, ObjectExistsError, FileExistsError) as e:
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
    return RunStore(_checked_bucket(bucket), prefix)


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

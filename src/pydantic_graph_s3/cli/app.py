"""The command tree (`app`, `runs_app`), the command class, the consoles and the options commands share.

Every command module registers its commands on these `Typer` objects; `main` imports them all.
"""

from __future__ import annotations as _annotations

import os
from enum import IntEnum
from typing import Annotated, Any

try:
    import typer
    from rich.console import Console
    from typer.core import TyperArgument, TyperCommand
except ImportError as e:  # pragma: no cover - only without the [cli] extra
    raise SystemExit("the pydantic-graph-s3 command needs its extra: pip install 'pydantic-graph-s3[cli]'") from e

__all__ = (
    'BucketOption',
    'Command',
    'EndpointOption',
    'ExitCode',
    'GraphOption',
    'JsonOption',
    'PrefixOption',
    'RunIdArgument',
    'StuckAfterOption',
    'app',
    'console',
    'errors',
    'runs_app',
)


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


class Command(TyperCommand):
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


def _use_endpoint(url: str | None) -> None:
    """`--endpoint-url`: the library and botocore find the endpoint where they find AWS's, in the environment."""
    if url is None:
        return
    if not url.startswith(('http://', 'https://')):
        raise typer.BadParameter(f'{url[:100]!r} is not an http:// or https:// URL', param_hint='--endpoint-url')
    os.environ['AWS_ENDPOINT_URL_S3'] = url


EndpointOption = Annotated[
    str | None,
    typer.Option(
        '--endpoint-url',
        metavar='URL',
        callback=_use_endpoint,
        expose_value=False,
        show_default=False,
        help='The S3 endpoint, instead of AWS_ENDPOINT_URL_S3 or AWS (e.g. the one `pydantic-graph-s3 local` prints).',
    ),
]
RunIdArgument = Annotated[
    str, typer.Argument(metavar='RUN_ID', help='The run id (its object is PREFIX + RUN_ID + .json).')
]


@app.callback()
def _root(endpoint_url: EndpointOption = None) -> None:
    """pydantic-graph runs stored in S3 with compare-and-swap writes."""

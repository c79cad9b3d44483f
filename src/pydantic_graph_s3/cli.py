"""The `pydantic-graph-s3` command line."""

from __future__ import annotations as _annotations

from typing import Annotated

try:
    import typer
    from rich.console import Console
except ImportError as e:  # pragma: no cover - only without the [cli] extra
    raise SystemExit("the pydantic-graph-s3 command needs its extra: pip install 'pydantic-graph-s3[cli]'") from e

from .demo import DemoOptions, run_demo

__all__ = ('app', 'main')

app = typer.Typer(
    help='pydantic-graph runs stored in S3 with compare-and-swap writes.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


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
    output = run_demo(DemoOptions(bucket=bucket, prefix=prefix, counter=counter, run_id=run_id), console)
    console.print(f'[green]run finished[/] with output {output}')


def main() -> None:
    app()

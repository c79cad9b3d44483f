"""The `pydantic-graph-s3` command line."""

from __future__ import annotations as _annotations

from pathlib import Path
from typing import Annotated

try:
    import typer
    from rich.console import Console
except ImportError as e:  # pragma: no cover - only without the [cli] extra
    raise SystemExit("the pydantic-graph-s3 command needs its extra: pip install 'pydantic-graph-s3[cli]'") from e

from .demo import DemoOptions, run_demo
from .packaging import Architecture, LambdaPackage, PackagingError, build_lambda_package

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
            console.print(f'[red]{e}[/]')
            raise typer.Exit(1) from e
    console.print(f'[green]built[/] {built} ({built.stat().st_size / 1e6:.1f} MB)')


def main() -> None:
    app()

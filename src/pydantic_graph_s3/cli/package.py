"""`package`: build a Lambda deployment package (this library, its dependencies for Lambda, your handler)."""

from __future__ import annotations as _annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ..packaging import Architecture, LambdaPackage, PackagingError, build_lambda_package
from .app import Command, app, console

__all__ = ('package',)


@app.command(cls=Command)
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

"""`demo`: pydantic-graph's count-down, one step per simulated invocation, on the embedded S3 or a real bucket."""

from __future__ import annotations as _annotations

from typing import Annotated

import typer
from rich.text import Text

from ..demo import DemoOptions, run_demo
from . import common
from .app import Command, EndpointOption, app, console

__all__ = ('demo',)


@app.command(cls=Command)
def demo(
    bucket: Annotated[
        str | None,
        typer.Option(help='A real bucket, used through the standard AWS configuration. Default: embedded S3.'),
    ] = None,
    prefix: Annotated[str, typer.Option(help='Key prefix of the run objects.')] = 'graph-runs/',
    counter: Annotated[int, typer.Option(min=0, max=1000, help='Where the count-down starts.')] = 5,
    run_id: Annotated[str | None, typer.Option(help='Run id (default: a new one).')] = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Run pydantic-graph's count-down one step per simulated invocation, each with a fresh persistence."""
    if bucket is not None:
        common.checked_bucket(bucket)
    with common.user_errors():
        output = run_demo(DemoOptions(bucket=bucket, prefix=prefix, counter=counter, run_id=run_id), console)
    console.print(Text.assemble(('run finished', 'green'), f' with output {output}'))

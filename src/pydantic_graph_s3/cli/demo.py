"""`demo`: pydantic-graph's count-down, one step per simulated invocation, on the embedded S3 or a real bucket."""

from __future__ import annotations as _annotations

from typing import Annotated

import typer
from rich.text import Text

from ..demo import DemoOptions, run_demo
from ..persistence import validate_prefix, validate_run_id
from . import common
from .app import Command, EndpointOption, ExitCode, app, console

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
    # Every argument is checked before anything starts (the embedded S3 takes seconds).
    if bucket is not None:
        common.checked_bucket(bucket)
    with common.user_errors():
        validate_prefix(common.checked_prefix(prefix))
        if run_id is not None:
            validate_run_id(run_id)
    if bucket is None and not _embedded_s3_installed():
        common.fail(
            ExitCode.USAGE,
            "the demo's embedded S3 needs moto: pip install 'pydantic-graph-s3[embedded]', "
            'or pass --bucket (a local one: `pydantic-graph-s3 local`)',
        )
    with common.user_errors():
        output = run_demo(DemoOptions(bucket=bucket, prefix=prefix, counter=counter, run_id=run_id), console)
    console.print(Text.assemble(('run finished', 'green'), f' with output {output}'))


def _embedded_s3_installed() -> bool:
    try:
        import moto.server  # noqa: F401  (the embedded S3 is moto's server)
    except ImportError:
        return False
    return True

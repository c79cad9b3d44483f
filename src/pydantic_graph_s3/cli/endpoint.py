"""`check-endpoint`: does the endpoint honour the conditional writes every run relies on?"""

from __future__ import annotations as _annotations

from rich.text import Text

from pydantic_s3_cas import verify_conditional_writes

from . import common
from .app import BucketOption, Command, EndpointOption, JsonOption, PrefixOption, app, console

__all__ = ('check_endpoint',)


@app.command('check-endpoint', cls=Command)
def check_endpoint(
    bucket: BucketOption, prefix: PrefixOption = '', as_json: JsonOption = False, endpoint_url: EndpointOption = None
) -> None:
    """Check that the endpoint honours If-Match and If-None-Match, on a probe object it then deletes."""
    common.checked_bucket(bucket)
    endpoint = common.run(lambda: verify_conditional_writes(bucket, prefix))
    if as_json:
        common.print_json({'bucket': bucket, 'prefix': prefix, 'endpoint': endpoint, 'conditional_writes': True})
        return
    console.print(Text(f'conditional writes honoured at s3://{bucket}/{prefix}: {endpoint}'))

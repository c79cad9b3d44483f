"""SeaweedFS as a second, independent S3 implementation for the test suite.

`weed mini` runs master, volume server, filer and S3 gateway in one process. We start it on free loopback ports
with one configured identity, so that unlike moto it checks SigV4 signatures, and wait until an authenticated
write round trip succeeds before handing the endpoint out. Its logs go to a file in the data directory.
"""

from __future__ import annotations as _annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pydantic_s3_cas.local_s3 import (
    free_ports,
    remove_leftover_sockets,
    start_weed,
    stop_process_group,
    weed_binary,
    weed_mini_args,
)

from .endpoints import S3Endpoint

__all__ = ('seaweedfs_s3', 'weed_binary')

ACCESS_KEY = 'seaweedfs-test-access-key'
SECRET_KEY = 'seaweedfs-test-secret-key'
REGION = 'us-east-1'
_PROBE_BUCKET = 'seaweedfs-readiness-probe'


@contextmanager
def seaweedfs_s3(
    tmp_dir: Path, *, timeout: float = 60.0, stop_timeout: float = 10.0, attempts: int = 3
) -> Iterator[S3Endpoint]:
    """Run SeaweedFS with its data and log (`weed.log`) under `tmp_dir`, yield its S3 endpoint, stop it on exit.

    Free ports are picked before the server binds them, so another process can take one in between; a start
    that fails that way is retried on fresh ports, up to `attempts` times.
    """
    endpoint = S3Endpoint(url='', access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
    config = tmp_dir / 's3.json'
    config.write_text(json.dumps(_identities(endpoint)))
    deadline = time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        with ExitStack() as stack:
            ports = free_ports()
            endpoint = endpoint.with_url(f'http://127.0.0.1:{ports["s3.port"]}')
            data_dir = tmp_dir / f'data-{attempt}'
            data_dir.mkdir()
            process = stack.enter_context(_weed_mini(data_dir, config, ports, stop_timeout))
            if _wait_ready(process, endpoint, deadline):
                yield endpoint
                return
            if time.monotonic() >= deadline:
                log = data_dir / 'weed.log'
                raise RuntimeError(f'SeaweedFS did not accept S3 requests within {timeout:.0f}s; see {log}')
    raise RuntimeError(f'SeaweedFS failed to start {attempts} times; see the weed.log files under {tmp_dir}')


def _identities(endpoint: S3Endpoint) -> dict[str, object]:
    """The `-s3.config` document: a single identity allowed everything, so requests signed otherwise fail."""
    actions = ['Admin', 'Read', 'Write', 'List', 'Tagging']
    credentials = [{'accessKey': endpoint.access_key, 'secretKey': endpoint.secret_key}]
    return {'identities': [{'name': 'tests', 'credentials': credentials, 'actions': actions}]}


@contextmanager
def _weed_mini(
    data_dir: Path, config: Path, ports: dict[str, int], stop_timeout: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `weed mini` as `pydantic-graph-s3 local` does, with `config`'s identity; kill its whole group on exit."""
    process = start_weed(weed_mini_args(data_dir, ports, s3_config=config), data_dir / 'weed.log')
    try:
        yield process
    finally:
        stop_process_group(process, stop_timeout)
        remove_leftover_sockets(ports)


def _wait_ready(process: subprocess.Popen[bytes], endpoint: S3Endpoint, deadline: float) -> bool:
    """Poll until an authenticated bucket create + put + delete works: True, or False once `weed` has exited."""
    client = endpoint.sync_client(Config(connect_timeout=1, read_timeout=5, retries={'total_max_attempts': 1}))
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                _create_bucket(client, _PROBE_BUCKET)
                client.put_object(Bucket=_PROBE_BUCKET, Key='probe', Body=b'probe')
                client.delete_object(Bucket=_PROBE_BUCKET, Key='probe')
                client.delete_bucket(Bucket=_PROBE_BUCKET)
                return True
            except (BotoCoreError, ClientError):
                time.sleep(0.1)
        return False
    finally:
        client.close()


def _create_bucket(client: Any, bucket: str) -> None:
    """Create `bucket` unless a previous (partly failed) probe already did."""
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get('Error', {}).get('Code') != 'BucketAlreadyOwnedByYou':
            raise

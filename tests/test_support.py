"""The test-support servers work, and what the S3 implementations we test against do with conditional writes.

The conditional-write tests pin down facts the compare-and-swap layer relies on; if an upgrade of SeaweedFS
or moto changes one of them, the failure says which.
"""

from __future__ import annotations as _annotations

import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aioboto3
import aiohttp
import anyio
import pytest
from aiobotocore.config import AioConfig
from aiohttp import web
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from pydantic_s3_cas.child_process import dies_with_parent

from .support.endpoints import S3Endpoint
from .support.fault_proxy import RANDOM_FAULTS, Fault, FaultProxy, fault_proxy
from .support.seaweedfs import seaweedfs_s3

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.anyio

WRITERS = 20
# SeaweedFS serializes contending conditional writes on a lock it retries about once a second, so one round
# with 20 writers takes several seconds there; the rounds run concurrently, on different keys.
ROUNDS = 3
MD5_OF_V0 = '"9abcde3c584628a02620bf796dee1204"'  # the ETag of b'v0': its MD5 in hex, in double quotes


@pytest.fixture
def seaweedfs(seaweedfs_endpoint: S3Endpoint) -> S3Endpoint:
    return seaweedfs_endpoint


@pytest.fixture
def moto(moto_endpoint: S3Endpoint) -> S3Endpoint:
    return moto_endpoint


@pytest.fixture(params=['seaweedfs', 'moto'])
def endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    result: S3Endpoint = request.getfixturevalue(request.param)
    return result


@pytest.fixture
def proxy(seaweedfs: S3Endpoint) -> Iterator[FaultProxy]:
    """A fault proxy in front of SeaweedFS, which checks signatures, so forwarding must keep them valid."""
    with fault_proxy(seaweedfs.url) as proxy:
        yield proxy


@asynccontextmanager
async def s3_client(endpoint: S3Endpoint, **config: Any) -> AsyncIterator[S3Client]:
    """A client for `endpoint` that never retries, so each call is exactly one request."""
    session = aioboto3.Session()
    async with session.client(
        's3',
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=AioConfig(**{'retries': {'total_max_attempts': 1}, **config}),
    ) as client:
        yield client


@pytest.fixture
async def bucket(endpoint: S3Endpoint) -> str:
    return await new_bucket(endpoint)


async def new_bucket(endpoint: S3Endpoint) -> str:
    name = f'test-{uuid.uuid4().hex[:12]}'
    async with s3_client(endpoint) as client:
        await client.create_bucket(Bucket=name)
    return name


def error_of(exc_info: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc_info.value.response
    return response['ResponseMetadata']['HTTPStatusCode'], response['Error']['Code']


# --- SeaweedFS -------------------------------------------------------------------------------------------------


def weed_processes(marker: str) -> list[str]:
    ps = subprocess.run(['ps', '-ww', '-eo', 'pid,args'], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if 'weed' in line and marker in line]


def test_seaweedfs_starts_quickly_quietly_and_leaves_nothing_behind(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with seaweedfs_s3(tmp_path) as endpoint:
        assert endpoint.url.startswith('http://127.0.0.1:')
        assert len(weed_processes(str(tmp_path))) == 1
        ports = [arg.split('=')[1] for arg in weed_processes(str(tmp_path))[0].split() if '.port' in arg]
    assert weed_processes(str(tmp_path)) == []
    assert not [p for port in ports for p in Path('/tmp').glob(f'seaweedfs-*-{port}.sock')]
    assert 'Starting SeaweedFS' in (tmp_path / 'data-1' / 'weed.log').read_text()
    assert capfd.readouterr() == ('', '')


# A test run that is SIGKILLed (or times out) before its `finally` blocks run: what it started must die too.
ORPHANING_PARENT = """\
import sys, time
from pathlib import Path
from pydantic_s3_cas.child_process import popen_dying_with_parent
from pydantic_s3_cas.embedded import embedded_s3
from tests.support.seaweedfs import seaweedfs_s3

with embedded_s3() as moto_url, seaweedfs_s3(Path(sys.argv[1])) as seaweedfs:
    worker = popen_dying_with_parent([sys.executable, '-c', 'import time; time.sleep(600)'])
    print(moto_url, seaweedfs.url, worker.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_servers_and_workers_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, '-c', ORPHANING_PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        **dies_with_parent(),
    ) as parent:
        assert parent.stdout is not None
        moto_url, seaweedfs_url, worker = parent.stdout.readline().split()
        assert weed_processes(str(tmp_path)) and listening(moto_url) and listening(seaweedfs_url)
        assert alive(int(worker))
        parent.kill()  # no `finally`, no atexit: only the kernel can stop what it started
    while weed_processes(str(tmp_path)) or listening(moto_url) or listening(seaweedfs_url) or alive(int(worker)):
        time.sleep(0.1)  # the kernel signals at once; the processes may take a moment to exit


def listening(url: str) -> bool:
    host, port = url.removeprefix('http://').split(':')
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return ' Z ' not in Path(f'/proc/{pid}/stat').read_text().split(')', 1)[1][:4]
    except FileNotFoundError:
        return False


async def test_seaweedfs_enforces_authentication(seaweedfs: S3Endpoint) -> None:
    async with s3_client(seaweedfs) as client:
        await client.list_buckets()
    for wrong, code in [
        (S3Endpoint(seaweedfs.url, seaweedfs.access_key, 'wrong-secret', seaweedfs.region), 'SignatureDoesNotMatch'),
        (S3Endpoint(seaweedfs.url, 'unknown-key', seaweedfs.secret_key, seaweedfs.region), 'InvalidAccessKeyId'),
    ]:
        async with s3_client(wrong) as client:
            with pytest.raises(ClientError) as exc_info:
                await client.list_buckets()
        assert error_of(exc_info) == (403, code)


# --- Conditional writes: the facts ------------------------------------------------------------------------------


async def test_etag_is_the_quoted_md5(endpoint: S3Endpoint, bucket: str) -> None:
    async with s3_client(endpoint) as client:
        put = await client.put_object(Bucket=bucket, Key='k', Body=b'v0')
        head = await client.head_object(Bucket=bucket, Key='k')
    assert put['ETag'] == head['ETag'] == MD5_OF_V0


async def test_if_none_match_on_an_existing_key_is_412(endpoint: S3Endpoint, bucket: str) -> None:
    async with s3_client(endpoint) as client:
        await client.put_object(Bucket=bucket, Key='k', Body=b'v0', IfNoneMatch='*')
        with pytest.raises(ClientError) as exc_info:
            await client.put_object(Bucket=bucket, Key='k', Body=b'v1', IfNoneMatch='*')
        assert error_of(exc_info) == (412, 'PreconditionFailed')
        assert await (await client.get_object(Bucket=bucket, Key='k'))['Body'].read() == b'v0'


async def test_if_match_with_a_stale_etag_is_412(endpoint: S3Endpoint, bucket: str) -> None:
    async with s3_client(endpoint) as client:
        stale = (await client.put_object(Bucket=bucket, Key='k', Body=b'v0'))['ETag']
        fresh = (await client.put_object(Bucket=bucket, Key='k', Body=b'v1', IfMatch=stale))['ETag']
        with pytest.raises(ClientError) as exc_info:
            await client.put_object(Bucket=bucket, Key='k', Body=b'v2', IfMatch=stale)
        assert error_of(exc_info) == (412, 'PreconditionFailed')
        assert (await client.head_object(Bucket=bucket, Key='k'))['ETag'] == fresh


async def test_if_match_on_a_missing_key(endpoint: S3Endpoint, bucket: str, request: pytest.FixtureRequest) -> None:
    """SeaweedFS answers 412 (as the HTTP spec says); moto 404 NoSuchKey (as AWS documents for S3)."""
    expected = {'seaweedfs': (412, 'PreconditionFailed'), 'moto': (404, 'NoSuchKey')}
    async with s3_client(endpoint) as client:
        with pytest.raises(ClientError) as exc_info:
            await client.put_object(
                Bucket=bucket, Key='missing', Body=b'v', IfMatch='"9abcde3c584628a02620bf796dee1204"'
            )
    assert error_of(exc_info) == expected[request.node.callspec.params['endpoint']]


async def test_if_match_accepts_an_unquoted_etag(endpoint: S3Endpoint, bucket: str) -> None:
    async with s3_client(endpoint) as client:
        etag = (await client.put_object(Bucket=bucket, Key='k', Body=b'v0'))['ETag']
        await client.put_object(Bucket=bucket, Key='k', Body=b'v1', IfMatch=etag.strip('"'))


@pytest.mark.parametrize('condition', ['if-match', 'if-none-match'])
async def test_racing_conditional_writes_have_exactly_one_winner(
    endpoint: S3Endpoint, bucket: str, condition: str
) -> None:
    """20 writers race with the same precondition, in several rounds: one wins, the others get 412, and the
    object holds the winner's body. (SeaweedFS 4.16 let all of them win: seaweedfs/seaweedfs#8800.)"""
    async with s3_client(endpoint, max_pool_connections=WRITERS * ROUNDS, read_timeout=60) as client:

        async def write(key: str, precondition: dict[str, str], writer: int, results: Counter[str], won: list[bytes]):
            body = f'writer {writer}'.encode()
            try:
                await client.put_object(Bucket=bucket, Key=key, Body=body, **precondition)  # type: ignore[arg-type]
            except ClientError as e:
                results[f'{e.response["ResponseMetadata"]["HTTPStatusCode"]} {e.response["Error"]["Code"]}'] += 1
            else:
                results['ok'] += 1
                won.append(body)

        rounds: list[tuple[str, Counter[str], list[bytes]]] = []
        async with anyio.create_task_group() as tg:
            for round_ in range(ROUNDS):
                key, results, winners = f'race-{round_}', Counter[str](), list[bytes]()
                rounds.append((key, results, winners))
                if condition == 'if-match':
                    precondition = {'IfMatch': (await client.put_object(Bucket=bucket, Key=key, Body=b'0'))['ETag']}
                else:
                    precondition = {'IfNoneMatch': '*'}
                for writer in range(WRITERS):
                    tg.start_soon(write, key, precondition, writer, results, winners)

        for key, results, winners in rounds:
            assert results == {'ok': 1, '412 PreconditionFailed': WRITERS - 1}, key
            assert await (await client.get_object(Bucket=bucket, Key=key))['Body'].read() == winners[0]


# --- Fault proxy -----------------------------------------------------------------------------------------------


async def test_proxy_forwards_signed_requests_unchanged(endpoint: S3Endpoint) -> None:
    with fault_proxy(endpoint.url) as proxy:
        via_proxy = endpoint.with_url(proxy.url)
        bucket = await new_bucket(via_proxy)
        key = 'dir/a key with spaces+plus=equals~ü.json'
        async with s3_client(via_proxy) as client:
            put = await client.put_object(Bucket=bucket, Key=key, Body=b'{"v": 1}', IfNoneMatch='*')
            got = await client.get_object(Bucket=bucket, Key=key)
            assert await got['Body'].read() == b'{"v": 1}'
            assert got['ETag'] == put['ETag']
            head = await client.head_object(Bucket=bucket, Key=key)
            assert (head['ContentLength'], head['ETag']) == (8, put['ETag'])
            listed = await client.list_objects_v2(Bucket=bucket, Prefix='dir/', Delimiter='/')
            assert [o['Key'] for o in listed['Contents']] == [key]
            with pytest.raises(ClientError) as exc_info:
                await client.get_object(Bucket=bucket, Key='missing')
            assert error_of(exc_info) == (404, 'NoSuchKey')
            await client.delete_object(Bucket=bucket, Key=key)
    assert [(e.method, e.status, e.injected) for e in proxy.log] == [
        ('PUT', 200, False),
        ('PUT', 200, False),
        ('GET', 200, False),
        ('HEAD', 200, False),
        ('GET', 200, False),
        ('GET', 404, False),
        ('DELETE', 204, False),
    ]


async def test_proxy_keeps_wrong_signatures_wrong(seaweedfs: S3Endpoint, proxy: FaultProxy) -> None:
    wrong = S3Endpoint(proxy.url, seaweedfs.access_key, 'wrong-secret', seaweedfs.region)
    async with s3_client(wrong) as client:
        with pytest.raises(ClientError) as exc_info:
            await client.list_buckets()
    assert error_of(exc_info) == (403, 'SignatureDoesNotMatch')


@pytest.mark.parametrize(
    ('status', 'code'),
    [(412, 'PreconditionFailed'), (409, 'ConditionalRequestConflict'), (500, 'InternalError'), (503, 'SlowDown')],
)
async def test_injected_errors_are_s3_errors_and_never_forwarded(
    seaweedfs: S3Endpoint, proxy: FaultProxy, status: int, code: str
) -> None:
    bucket = await new_bucket(seaweedfs)
    proxy.inject(Fault(status=status, method='PUT', times=2))
    async with s3_client(seaweedfs.with_url(proxy.url)) as client, s3_client(seaweedfs) as direct:
        for _ in range(2):
            with pytest.raises(ClientError) as exc_info:
                await client.put_object(Bucket=bucket, Key='k', Body=b'v')
            assert error_of(exc_info) == (status, code)
            assert exc_info.value.response['Error']['Message']
            with pytest.raises(ClientError):
                await direct.head_object(Bucket=bucket, Key='k')
        await client.put_object(Bucket=bucket, Key='k', Body=b'v')  # the fault is used up
    assert [(e.status, e.fault, e.upstream_status) for e in proxy.log] == [
        (status, f'{status} {code}', None),
        (status, f'{status} {code}', None),
        (200, None, 200),
    ]
    assert proxy.counters == {'requests': 3, 'forwarded': 1, 'injected': 2, f'{status} {code}': 2}


async def test_faults_match_method_and_path(seaweedfs: S3Endpoint, proxy: FaultProxy) -> None:
    bucket = await new_bucket(seaweedfs)
    proxy.inject(Fault(status=503, method='PUT', path='/locks/', times=None))
    async with s3_client(seaweedfs.with_url(proxy.url)) as client:
        await client.put_object(Bucket=bucket, Key='runs/1', Body=b'v')
        await client.get_object(Bucket=bucket, Key='runs/1')
        for _ in range(3):
            with pytest.raises(ClientError, match='SlowDown'):
                await client.put_object(Bucket=bucket, Key='locks/1', Body=b'v')
        proxy.clear()
        await client.put_object(Bucket=bucket, Key='locks/1', Body=b'v')
    assert [e.injected for e in proxy.log] == [False, False, True, True, True, False]


async def test_a_burst_can_start_after_some_matching_requests_and_ends_by_itself(
    seaweedfs: S3Endpoint, proxy: FaultProxy
) -> None:
    bucket = await new_bucket(seaweedfs)
    # The third and fourth PUT of one key fail; other keys, and the PUTs after the burst, are untouched.
    proxy.inject(Fault(status=503, method='PUT', path='/runs/a$', after=2, times=2))
    async with s3_client(seaweedfs.with_url(proxy.url)) as client:
        outcomes = []
        for key in ['runs/a', 'runs/b', 'runs/a', 'runs/a', 'runs/a', 'runs/a']:
            try:
                await client.put_object(Bucket=bucket, Key=key, Body=b'v')
                outcomes.append(True)
            except ClientError:
                outcomes.append(False)
    assert outcomes == [True, True, True, False, False, True]
    assert proxy.counters['injected'] == 2


async def test_timeout_fault_holds_the_request_until_the_client_gives_up(
    seaweedfs: S3Endpoint, proxy: FaultProxy
) -> None:
    bucket = await new_bucket(seaweedfs)
    proxy.inject(Fault(timeout=True, method='PUT'))
    async with s3_client(seaweedfs.with_url(proxy.url), read_timeout=1) as client, s3_client(seaweedfs) as direct:
        with pytest.raises(ReadTimeoutError):
            await client.put_object(Bucket=bucket, Key='k', Body=b'v')
        with pytest.raises(ClientError, match='404'):
            await direct.head_object(Bucket=bucket, Key='k')
    assert [(e.status, e.fault, e.upstream_status) for e in proxy.log] == [(None, 'timeout', None)]


async def test_a_slow_healthy_answer_never_hits_the_clients_read_timeout() -> None:
    """Tests keep read timeouts short so that held requests time out quickly: the proxy keeps a request that S3 is
    still answering alive, so a loaded machine cannot turn a slow answer into a timeout."""

    async def slow(request: web.Request) -> web.Response:
        await anyio.sleep(1.5)  # the deliberately slow server: five times the client's read timeout
        return web.Response(text='late but healthy')

    app = web.Application()
    app.router.add_get('/{key}', slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with fault_proxy(f'http://127.0.0.1:{port}') as slow_proxy:
            timeout = aiohttp.ClientTimeout(sock_read=0.3)
            async with aiohttp.ClientSession(timeout=timeout) as client, client.get(f'{slow_proxy.url}/k') as response:
                assert (response.status, await response.text()) == (200, 'late but healthy')
        assert [(e.status, e.fault) for e in slow_proxy.log] == [(200, None)]
    finally:
        await runner.cleanup()


async def until_logged(proxy: FaultProxy, exchanges: int) -> None:
    """Wait until the proxy has decided `exchanges` requests (a forwarded one once S3 answered it)."""
    with anyio.fail_after(120):  # a safety net only: each wait is for one loopback request
        while len(proxy.log) < exchanges:  # noqa: ASYNC110 - the log is written on the proxy's thread
            await anyio.sleep(0.01)


@pytest.mark.parametrize(
    ('fault', 'error'),
    [
        (Fault(timeout=True, forward=True), ReadTimeoutError),
        (Fault(status=500, forward=True), ClientError),
    ],
)
async def test_forwarding_faults_land_the_write_but_fail_the_request(
    seaweedfs: S3Endpoint, proxy: FaultProxy, fault: Fault, error: type[Exception]
) -> None:
    """The ambiguous outcome: the client sees a failure although its conditional write took effect."""
    bucket = await new_bucket(seaweedfs)
    proxy.inject(fault)
    async with s3_client(seaweedfs.with_url(proxy.url), read_timeout=1) as client, s3_client(seaweedfs) as direct:
        with pytest.raises(error):
            await client.put_object(Bucket=bucket, Key='k', Body=b'landed', IfNoneMatch='*')
        # A client that timed out may be faster than S3 on a loaded machine: wait until the write has landed.
        await until_logged(proxy, 1)
        assert await (await direct.get_object(Bucket=bucket, Key='k'))['Body'].read() == b'landed'
        # A retry of the same conditional write now fails: the caller must re-read to learn it had won.
        with pytest.raises(ClientError) as exc_info:
            await client.put_object(Bucket=bucket, Key='k', Body=b'landed', IfNoneMatch='*')
        assert error_of(exc_info) == (412, 'PreconditionFailed')
    assert [(e.fault, e.upstream_status) for e in proxy.log] == [(fault.kind, 200), (None, 412)]


async def test_a_dropped_put_is_resent_and_fails_its_own_precondition(seaweedfs: S3Endpoint, proxy: FaultProxy) -> None:
    """aiohttp (3.14, under aiobotocore) resends a PUT once when the server closes the connection, below botocore's
    retries. So when the response to a conditional write that landed is lost, the client sees 412 for its own
    write: a 412 does not prove someone else won."""
    bucket = await new_bucket(seaweedfs)
    proxy.inject(Fault(drop=True, forward=True))
    async with s3_client(seaweedfs.with_url(proxy.url)) as client, s3_client(seaweedfs) as direct:
        with pytest.raises(ClientError) as exc_info:
            await client.put_object(Bucket=bucket, Key='k', Body=b'landed', IfNoneMatch='*')
        assert error_of(exc_info) == (412, 'PreconditionFailed')
        assert await (await direct.get_object(Bucket=bucket, Key='k'))['Body'].read() == b'landed'
    assert [(e.fault, e.status, e.upstream_status) for e in proxy.log] == [
        ('forward+drop', None, 200),
        (None, 412, 412),
    ]


async def test_a_put_dropped_twice_is_a_connection_error(seaweedfs: S3Endpoint, proxy: FaultProxy) -> None:
    bucket = await new_bucket(seaweedfs)
    proxy.inject(Fault(drop=True, times=2))
    async with s3_client(seaweedfs.with_url(proxy.url)) as client, s3_client(seaweedfs) as direct:
        with pytest.raises(ConnectionClosedError):
            await client.put_object(Bucket=bucket, Key='k', Body=b'lost', IfNoneMatch='*')
        with pytest.raises(ClientError, match='404'):
            await direct.head_object(Bucket=bucket, Key='k')
    assert [(e.fault, e.upstream_status) for e in proxy.log] == [('drop', None), ('drop', None)]


async def test_random_faults_are_reproducible_from_the_seed(seaweedfs: S3Endpoint) -> None:
    bucket = await new_bucket(seaweedfs)

    async def run(seed: int) -> list[str | None]:
        with fault_proxy(seaweedfs.url) as proxy:
            proxy.random_faults(rate=0.2, seed=seed)
            async with s3_client(seaweedfs.with_url(proxy.url), read_timeout=0.3) as client:
                for i in range(15):
                    with suppress(ClientError, ReadTimeoutError):
                        await client.put_object(Bucket=bucket, Key=f'k{i}', Body=b'v')
            return [e.fault for e in proxy.log]

    first = await run(seed=7)
    assert first == await run(seed=7)
    assert first != await run(seed=8)
    injected = [kind for kind in first if kind is not None]
    assert 0 < len(injected) < 15
    assert set(injected) <= {fault.kind for fault in RANDOM_FAULTS}


def test_fault_needs_exactly_one_outcome() -> None:
    with pytest.raises(ValueError, match='exactly one'):
        Fault()
    with pytest.raises(ValueError, match='exactly one'):
        Fault(status=500, timeout=True)
    with pytest.raises(ValueError, match='code='):
        Fault(status=418)
    assert Fault(status=418, code='ImATeapot').kind == '418 ImATeapot'

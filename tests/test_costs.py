"""What a step costs in S3 requests, and the shared client behind every instance on an event loop."""

from __future__ import annotations as _annotations

import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic_graph import End
from pydantic_graph.graph import Graph
from types_aiobotocore_s3 import S3Client

from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.layout import segment_group_prefix
from pydantic_s3_cas import shared_client

from .conftest import FRESH, S3Bucket
from .support.endpoints import S3Endpoint
from .support.fixtures import new_session
from .test_long_runs import PAD, Pad, PadState, pad_graph

pytestmark = pytest.mark.anyio


@dataclass(eq=False)  # botocore keys handlers by hash
class Sent:
    """The requests a client sent, seen by a botocore `before-send` hook: by method, and by object kind (a run's
    head, or one of its segments, whose keys hold `~`)."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __call__(self, request: Any, **_: Any) -> None:
        self.requests[request.method, 'segment' if '~' in request.url else 'head'] += 1

    def per_method(self) -> Counter[str]:
        methods: Counter[str] = Counter()
        for (method, _), count in self.requests.items():
            methods[method] += count
        return methods


@asynccontextmanager
async def counting_client(s3: S3Bucket) -> AsyncIterator[tuple[S3Client, Sent]]:
    """A client of the test's own (not the library's shared one, nor its counters), counting what it sends."""
    sent = Sent()
    async with new_session(s3.endpoint).client('s3', endpoint_url=s3.endpoint.url) as client:
        client.meta.events.register('before-send.s3', sent)
        yield client, sent


async def fresh_steps(s3: S3Bucket, graph: Graph[Any, Any, Any], run_id: str, client: S3Client) -> int:
    """Advance the run to its end one step per fresh persistence, as one Lambda invocation per step does."""
    steps = 0
    while True:
        async with graph.iter_from_persistence(s3.persistence(run_id, client=client)) as run:
            steps += 1
            if isinstance(await run.next(), End):
                return steps


async def segments(s3: S3Bucket, run_id: str) -> int:
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix=segment_group_prefix(f'runs/{run_id}.json'))
    return len(listed.get('Contents', []))


async def test_graph_run_costs_two_puts_per_step_and_one_get(s3: S3Bucket) -> None:
    async with counting_client(s3) as (client, sent):
        persistence = s3.persistence('in-process', client=client)
        await count_down_graph.run(CountDown(), state=CountDownState(4), persistence=persistence)
    nodes = 5  # counters 4, 3, 2, 1, 0
    # One GET finds no run, one create; then per node: running, and its success with the next snapshot (or the
    # end) in one write. The states are small, so nothing is sealed.
    assert sent.per_method() == Counter({'GET': 1, 'PUT': 1 + 2 * nodes})
    assert (persistence.stats.gets, persistence.stats.puts, persistence.stats.conflicts) == (1, 1 + 2 * nodes, 0)


async def test_fresh_instance_per_step_costs_one_get_and_two_puts(s3: S3Bucket) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=s3.persistence('fresh'))
    async with counting_client(s3) as (client, sent):
        steps = await fresh_steps(s3, count_down_graph, 'fresh', client)
    assert steps == 4
    # Per step: the read, the claim that starts the node, and the success with its successor in one write.
    assert sent.per_method() == Counter({'GET': steps, 'PUT': 2 * steps})


@pytest.mark.parametrize('with_claims', [False, True], ids=['strict', 'reclaim_after'])
async def test_a_run_long_enough_to_seal_costs_the_same_plus_one_put_per_segment(
    s3: S3Bucket, with_claims: bool
) -> None:
    options: dict[str, Any] = {'reclaim_after': FRESH} if with_claims else {}
    async with counting_client(s3) as (client, in_process):
        persistence = s3.persistence('in-process', client=client, **options)
        # 3 KB of state per snapshot: a segment every three finished snapshots.
        await pad_graph.run(Pad(), state=PadState(12, 'x' * PAD), persistence=persistence)
    await pad_graph.initialize(Pad(), state=PadState(12, 'x' * PAD), persistence=s3.persistence('fresh', **options))
    async with counting_client(s3) as (client, fresh):
        steps = await fresh_steps(s3, pad_graph, 'fresh', client)
    assert steps == 13

    sealed = await segments(s3, 'in-process')
    assert sealed >= 3, 'long enough to seal'
    # In one process: one GET finds no run, one create, two head writes per step, and one create per segment.
    expected = {('GET', 'head'): 1, ('PUT', 'head'): 1 + 2 * steps, ('PUT', 'segment'): sealed}
    assert in_process.requests == Counter(expected)
    # One fresh instance per step: a read and two head writes per step, one create per segment, no segment read.
    sealed = await segments(s3, 'fresh')
    assert sealed >= 3
    expected = {('GET', 'head'): steps, ('PUT', 'head'): 2 * steps, ('PUT', 'segment'): sealed}
    assert fresh.requests == Counter(expected)


async def test_stale_cache_falls_back_to_a_read(s3: S3Bucket) -> None:
    mine, theirs = s3.persistence('stale'), s3.persistence('stale')
    for persistence in (mine, theirs):
        persistence.set_graph_types(count_down_graph)
    await mine.snapshot_node(CountDownState(1), CountDown())
    await theirs.snapshot_node(CountDownState(2), CountDown())
    await mine.snapshot_node(CountDownState(3), CountDown())  # its cached ETag is stale now

    # One GET to find no run, one after the 412; two PUTs that landed and the one refused.
    assert (mine.stats.conflicts, mine.stats.gets, mine.stats.puts) == (1, 2, 3)
    assert [s.state.counter for s in await mine.load_all()] == [1, 2, 3]


async def test_instances_on_one_loop_share_one_client(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    session = new_session(s3.endpoint)
    created = 0
    make_client = session.client

    def counting_client(*args: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        return make_client(*args, **kwargs)

    monkeypatch.setattr(session, 'client', counting_client)
    await count_down_graph.initialize(
        CountDown(), state=CountDownState(2), persistence=s3.persistence('shared', session=session)
    )
    for _ in range(3):
        async with count_down_graph.iter_from_persistence(s3.persistence('shared', session=session)) as run:
            await run.next()
    assert created == 1
    assert await shared_client(session, s3.settings) is await shared_client(session, s3.settings)


CLOSE_CHECK = """
import asyncio, gc, sys
import aioboto3
from pydantic_graph_s3 import ClientSettings
from pydantic_s3_cas import shared_client

session = aioboto3.Session(aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')
settings = ClientSettings(endpoint_url=sys.argv[1])

async def use_client():
    client = await shared_client(session, settings)
    await client.list_buckets()
    return id(client)

print(asyncio.run(use_client()) != asyncio.run(use_client()))
gc.collect()
"""


def test_shared_clients_are_closed_when_the_loop_shuts_down(moto_endpoint: S3Endpoint) -> None:
    # Development mode reports every unclosed aiohttp session and connector on stderr.
    result = subprocess.run(
        [sys.executable, '-X', 'dev', '-c', CLOSE_CHECK, moto_endpoint.url], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, 'True\n'), result.stderr
    assert 'Unclosed' not in result.stderr


CLOSE_SHARED_CHECK = """
import asyncio, gc, sys
import aioboto3
from pydantic_graph_s3 import ClientSettings, RunStore
from pydantic_s3_cas import close_shared_client

session = aioboto3.Session(aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')
settings = ClientSettings(endpoint_url=sys.argv[1])
store = RunStore('no-such-bucket', session=session, client_settings=settings)

async def use_and_close():
    first = await store.s3()
    await first.list_buckets()
    if sys.argv[2] == 'close':
        await close_shared_client(session, settings)
        second = await store.s3()  # a later request opens another client
        await second.list_buckets()
        await close_shared_client(session, settings)
        await close_shared_client(session, settings)  # nothing open: nothing to do
        return second is not first
    return True

loop = asyncio.new_event_loop()  # closed without shutting down its async generators, unlike asyncio.run
print(loop.run_until_complete(use_and_close()))
loop.close()
gc.collect()
"""


@pytest.mark.parametrize('close', ['close', 'leave open'])
def test_close_shared_client_closes_it_on_a_loop_that_is_never_shut_down(moto_endpoint: S3Endpoint, close: str) -> None:
    """`close_shared_client` closes the loop's client where no loop shutdown would; the next request reopens one."""
    result = subprocess.run(
        [sys.executable, '-X', 'dev', '-c', CLOSE_SHARED_CHECK, moto_endpoint.url, close],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, 'True\n'), result.stderr
    assert ('Unclosed' in result.stderr) == (close == 'leave open'), result.stderr

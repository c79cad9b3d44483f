"""Bucket names are checked before any request, by every entry point, with S3's rules (see pydantic_s3_cas.names)."""

from __future__ import annotations as _annotations

import pytest

from pydantic_graph_s3 import ClientSettings, S3StatePersistence
from pydantic_graph_s3.examples.count_down import count_down_graph
from pydantic_graph_s3.runs import RunStore
from pydantic_graph_s3.serverless import GraphWorker
from pydantic_s3_cas import validate_bucket_name

VALID = [
    'abc',
    'my-bucket',
    'my.bucket.v2',
    'a' * 63,
    '0123',
    'logs--usw2-az1--x-s3',  # a directory bucket
    'logs--usw2-lax1-az1--x-s3',  # a directory bucket in a Local Zone
    'my-access-point-hrzrlukc5m36ft7okagglf3gmwluquse1b-s3alias',  # access point aliases work as bucket names
]
INVALID = {
    '': 'it is empty',
    'ab': 'it has 2 characters',
    'a' * 64: 'it has 64 characters',
    'x' * 300: '(300 characters)',
    'Bad_Bucket!': 'a character or an end',
    'a/b': 'a character or an end',
    'UPPER': 'a character or an end',
    '-ab': 'a character or an end',
    'ab-': 'a character or an end',
    'a..b': 'two dots in a row',
    '192.168.5.4': 'an IP address',
    'Logs--usw2-az1--x-s3': 'a character or an end',
}


@pytest.mark.parametrize('name', VALID)
def test_s3s_bucket_names_are_accepted(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(('name', 'problem'), INVALID.items())
def test_other_names_are_refused_with_the_rules(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match='invalid bucket name') as caught:
        validate_bucket_name(name)
    message = str(caught.value)
    assert problem in message and 'lowercase letters, digits, dots and hyphens' in message
    assert len(message) < 400  # a long name is quoted only in part


@pytest.mark.parametrize('name', ['Bad_Bucket!', 'a/b', 'x' * 300])
def test_every_entry_point_refuses_before_any_request(name: str) -> None:
    nowhere = ClientSettings(endpoint_url='http://127.0.0.1:9')  # a request would fail otherwise
    with pytest.raises(ValueError, match='invalid bucket name'):
        S3StatePersistence.for_run('r1', bucket=name, client_settings=nowhere)
    with pytest.raises(ValueError, match='invalid bucket name'):
        RunStore(name, client_settings=nowhere)
    with pytest.raises(ValueError, match='invalid bucket name'):
        GraphWorker(count_down_graph, bucket=name, client_settings=nowhere)


def test_a_worker_refuses_an_invalid_bucket_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_BUCKET', 'Bad_Bucket!')
    with pytest.raises(ValueError, match='invalid bucket name'):
        GraphWorker(count_down_graph).persistence('r1')

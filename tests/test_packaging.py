"""The Lambda deployment package: built with pip for a Lambda platform, then imported and run by a clean interpreter.

The build is for this machine's architecture and Python version, so that the package can really be loaded here;
only the platform tags differ for other targets, which `test_pip_targets_the_lambda_platform` checks.
"""

from __future__ import annotations as _annotations

import json
import os
import platform
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pydantic_graph_s3.cli import app
from pydantic_graph_s3.packaging import LambdaPackage, PackagingError, build_lambda_package, library_requirements

from .support.endpoints import S3Endpoint

HANDLER_MODULE = """\
from pydantic_graph_s3.examples.count_down import count_down_graph
from pydantic_graph_s3.serverless import GraphWorker

handler = GraphWorker(count_down_graph).lambda_handler
"""

# Run by the base interpreter with -I -S: no site-packages, no PYTHONPATH, nothing but the stdlib and the package.
INVOKE = """\
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import my_handler, pydantic_graph_s3, pydantic_core
assert pydantic_graph_s3.__file__.startswith(sys.argv[1]), pydantic_graph_s3.__file__
assert pydantic_core.__file__.startswith(sys.argv[1]), pydantic_core.__file__
assert [name for name in ('typer', 'rich', 'moto', 'pytest') if importlib.util.find_spec(name)] == []

class Context:
    def get_remaining_time_in_millis(self):
        return 30_000

start = {'action': 'start', 'run_id': 'packaged', 'node': {'node_id': 'CountDown'}, 'state': {'counter': 2}}
advance = {'action': 'advance', 'run_id': 'packaged'}
print(json.dumps([my_handler.handler(start, Context()), my_handler.handler(advance, Context())]))
"""

LOCAL_ARCHITECTURE: Any = {'x86_64': 'x86_64', 'amd64': 'x86_64', 'aarch64': 'arm64', 'arm64': 'arm64'}.get(
    platform.machine().lower()
)
LOCAL_PYTHON = f'{sys.version_info.major}.{sys.version_info.minor}'


@pytest.fixture(scope='module')
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if LOCAL_ARCHITECTURE is None or sys.platform != 'linux':
        pytest.skip('the package can only be loaded on Linux x86_64 or aarch64')
    source = tmp_path_factory.mktemp('handler') / 'my_handler.py'
    source.write_text(HANDLER_MODULE)
    output = tmp_path_factory.mktemp('build') / 'lambda.zip'
    return build_lambda_package(
        LambdaPackage(output, include=[source], architecture=LOCAL_ARCHITECTURE, python_version=LOCAL_PYTHON)
    )


@pytest.fixture(scope='module')
def extracted(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp('extracted')
    with zipfile.ZipFile(built) as archive:
        archive.extractall(directory)
    return directory


@pytest.mark.packaging
def test_package_holds_the_handler_the_library_and_linux_wheels_only(built: Path) -> None:
    with zipfile.ZipFile(built) as archive:
        entries = archive.infolist()
    names = {entry.filename for entry in entries}
    assert {'my_handler.py', 'pydantic_graph_s3/serverless.py', 'pydantic_graph_s3/py.typed'} <= names
    assert any(name.startswith('aiobotocore/') for name in names)
    assert any(name.startswith('pydantic_settings/') for name in names)
    [core] = [name for name in names if name.startswith('pydantic_core/_pydantic_core.')]
    machine = 'x86_64' if LOCAL_ARCHITECTURE == 'x86_64' else 'aarch64'
    assert core.endswith(f'-{machine}-linux-gnu.so')
    top_level = {name.split('/')[0] for name in names}
    assert not top_level & {'typer', 'rich', 'moto', 'pytest', 'mypy'}
    assert not [name for name in names if '__pycache__' in name or name.endswith('.pyc')]
    assert {entry.date_time for entry in entries} == {(1980, 1, 1, 0, 0, 0)}
    assert all((entry.external_attr >> 16) & 0o444 == 0o444 for entry in entries)


@pytest.mark.packaging
def test_clean_interpreter_imports_the_package_and_runs_a_graph(extracted: Path, moto_endpoint: S3Endpoint) -> None:
    bucket = f'packaged-{uuid.uuid4().hex[:12]}'
    raw = moto_endpoint.sync_client()
    raw.create_bucket(Bucket=bucket)
    base_python = getattr(sys, '_base_executable', sys.executable)
    env = {
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
        'PYDANTIC_GRAPH_S3_BUCKET': bucket,
        'PYDANTIC_GRAPH_S3_PREFIX': 'packaged/',
        'AWS_ENDPOINT_URL_S3': moto_endpoint.url,
        'AWS_ACCESS_KEY_ID': moto_endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': moto_endpoint.secret_key,
        'AWS_DEFAULT_REGION': moto_endpoint.region,
        'AWS_CONFIG_FILE': os.devnull,
        'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
    }
    completed = subprocess.run(
        [base_python, '-I', '-S', '-c', INVOKE, str(extracted)],
        capture_output=True,
        text=True,
        env=env,
        cwd=extracted.parent,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    started, done = json.loads(completed.stdout)
    assert (started['status'], started['next_node']) == ('running', 'CountDown')
    assert (done['status'], done['steps'], done['output']) == ('done', 3, 0)
    stored = json.loads(raw.get_object(Bucket=bucket, Key='packaged/packaged.json')['Body'].read())
    assert [s['state']['counter'] for s in stored] == [2, 1, 0, 0]


def test_pip_targets_the_lambda_platform(tmp_path: Path) -> None:
    package = LambdaPackage(tmp_path / 'x.zip', requirements=['httpx>=0.27'], architecture='arm64')
    command = package.pip_command(tmp_path / 'target')
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == '--platform']
    assert platforms == ['manylinux2014_aarch64', 'manylinux_2_28_aarch64']
    assert {'--only-binary=:all:', '--no-compile'} <= set(command)
    assert command[command.index('--python-version') + 1] == '3.12'
    assert command[command.index('--target') + 1] == str(tmp_path / 'target')
    assert command[-1] == 'httpx>=0.27'
    assert 'pydantic-settings>=2.6' in library_requirements()
    assert not [r for r in library_requirements() if 'typer' in r or 'moto' in r]


def test_bad_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'\.zip'):
        LambdaPackage(tmp_path / 'x.tar')
    with pytest.raises(ValueError, match='nothing to include'):
        LambdaPackage(tmp_path / 'x.zip', include=[tmp_path / 'missing.py'])
    with pytest.raises(ValueError, match='architecture'):
        LambdaPackage(tmp_path / 'x.zip', architecture='sparc')  # type: ignore[arg-type]


def test_pip_failure_is_reported_and_leaves_no_zip(tmp_path: Path) -> None:
    output = tmp_path / 'lambda.zip'
    with pytest.raises(PackagingError, match='pip could not install'):
        build_lambda_package(LambdaPackage(output, pip_options=['--no-index']))
    assert list(tmp_path.iterdir()) == []


def test_cli_package_command_reports_pip_failure(tmp_path: Path) -> None:
    handler = tmp_path / 'my_handler.py'
    handler.write_text(HANDLER_MODULE)
    output = tmp_path / 'out' / 'lambda.zip'
    args = ['package', '--output', str(output), '--include', str(handler), '--architecture', 'x86_64']
    result = CliRunner().invoke(app, [*args, '--pip-option=--no-index'])
    assert result.exit_code == 1
    assert 'pip could not install the dependencies for x86_64, Python 3.12' in result.output
    assert not output.exists()
    refused = CliRunner().invoke(app, ['package', '--architecture', 'sparc'])
    assert refused.exit_code == 2

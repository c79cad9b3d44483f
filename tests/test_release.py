"""The release: three distributions with one version, built by `./dev build`, that work from their wheels alone.

The wheel tests install only what `./dev build` wrote (plus dependencies from the package index) into clean
virtualenvs outside the checkout, so a module missing from a wheel, or a file that only exists in the tree, fails
them. They are marked `packaging`: without a reachable index they are skipped with the reason.
"""

from __future__ import annotations as _annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from .support.network import package_index

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = {
    'pydantic-s3-cas': ROOT / 'packages/pydantic-s3-cas',
    'pydantic-graph-s3': ROOT,
    'pydantic-ai-harness-s3': ROOT / 'packages/pydantic-ai-harness-s3',
}
QUICKSTART = ROOT / 'packages/pydantic-ai-harness-s3/examples/quickstart.py'


def project(name: str) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((PROJECTS[name] / 'pyproject.toml').read_text())['project']
    return table


def own_requirements(name: str) -> list[Requirement]:
    """Every requirement of distribution `name` on one of the three, in its dependencies and its extras."""
    table = project(name)
    listed = [*table['dependencies'], *(r for extra in table['optional-dependencies'].values() for r in extra)]
    return [req for req in map(Requirement, listed) if req.name in PROJECTS and req.name != name]


def test_the_three_distributions_share_one_version_that_their_ranges_admit() -> None:
    versions = {name: project(name)['version'] for name in PROJECTS}
    assert len(set(versions.values())) == 1, versions
    for name in PROJECTS:
        for requirement in own_requirements(name):
            assert requirement.url is None, f'{name} must depend on {requirement} by a version range, not a path'
            assert requirement.specifier.contains(versions[requirement.name]), f'{name}: {requirement}'
    assert {r.name for r in own_requirements('pydantic-graph-s3')} == {'pydantic-s3-cas'}
    assert {r.name for r in own_requirements('pydantic-ai-harness-s3')} == {'pydantic-s3-cas'}


def test_every_distribution_carries_the_one_license() -> None:
    for name, folder in PROJECTS.items():
        table = project(name)
        assert (table['license'], table['license-files'], table['readme']) == ('MIT', ['LICENSE'], 'README.md')
        assert (folder / 'LICENSE').read_bytes() == (ROOT / 'LICENSE').read_bytes(), f'{folder}/LICENSE differs'


def test_the_package_readme_shows_the_quickstart_file_whole() -> None:
    readme = (ROOT / 'packages/pydantic-ai-harness-s3/README.md').read_text()
    blocks = re.findall(r'^```python\n(.*?)^```$', readme, flags=re.MULTILINE | re.DOTALL)
    assert QUICKSTART.read_text() in blocks


def run(command: Sequence[str | Path], cwd: Path, **env: str) -> str:
    """Run `command` in `cwd`, with no virtualenv or PYTHONPATH of the caller's; its output, or fail showing it.

    uv downloads from the index the skip decision checked (pip's `PIP_INDEX_URL` included, which uv does not read).
    """
    inherited = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME')}
    inherited['UV_DEFAULT_INDEX'] = package_index()
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**inherited, **env},
        timeout=600,  # a safety net only: a cold package cache can take minutes
        check=False,
    )
    assert done.returncode == 0, f'{command} exited {done.returncode}\n{done.stdout}\n{done.stderr}'
    return done.stdout


def fresh_venv(where: Path, *requirements: str) -> Path:
    """A new virtualenv at `where` (uv, from its cache where it can), with only `requirements` installed."""
    uv = [sys.executable, '-m', 'uv']
    run([*uv, 'venv', '--quiet', '--python', sys.executable, where], where.parent)
    python = where / 'bin/python'
    run([*uv, 'pip', 'install', '--quiet', '--python', python, *requirements], where.parent)
    return python


@pytest.fixture(scope='module')
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `./dev build DIR` writes: it fails unless twine check --strict and check-wheel-contents pass."""
    out = tmp_path_factory.mktemp('dist')
    run([ROOT / 'dev', 'build', out], ROOT)
    return out


def wheel(dist: Path, name: str, extras: str = '') -> str:
    """A requirement on exactly the wheel `./dev build` wrote for distribution `name`."""
    (found,) = dist.glob(f'{name.replace("-", "_")}-*-py3-none-any.whl')
    return f'{name}{extras} @ {found.as_uri()}'


@pytest.mark.packaging
def test_dev_build_writes_an_sdist_and_a_wheel_of_each_distribution(dist: Path) -> None:
    version = project('pydantic-graph-s3')['version']
    expected = {
        f'{name.replace("-", "_")}-{version}{end}' for name in PROJECTS for end in ('.tar.gz', '-py3-none-any.whl')
    }
    assert {path.name for path in dist.iterdir() if not path.name.startswith('.')} == expected


@pytest.mark.packaging
def test_the_wheels_alone_run_the_demo(dist: Path, tmp_path: Path) -> None:
    python = fresh_venv(
        tmp_path / 'venv',
        wheel(dist, 'pydantic-graph-s3', '[cli,embedded]'),
        wheel(dist, 'pydantic-s3-cas', '[embedded]'),
    )
    where = run(
        [python, '-c', 'import pydantic_graph_s3, pydantic_s3_cas as c; print(pydantic_graph_s3.__file__, c.__file__)'],
        tmp_path,
    )
    assert all(path.startswith(str(tmp_path / 'venv')) for path in where.split()), where
    output = run([tmp_path / 'venv/bin/pydantic-graph-s3', 'demo', '--counter', '2'], tmp_path, COLUMNS='200')
    assert 'run finished' in output


@pytest.mark.packaging
def test_the_wheels_alone_run_the_2x_quickstart(dist: Path, tmp_path: Path) -> None:
    python = fresh_venv(
        tmp_path / 'venv',
        wheel(dist, 'pydantic-ai-harness-s3'),
        wheel(dist, 'pydantic-s3-cas', '[embedded]'),
    )
    shutil.copy(QUICKSTART, tmp_path / 'quickstart.py')
    output = run([python, 'quickstart.py'], tmp_path)
    assert 'latest snapshot of librarian-1: 4 messages, complete' in output
    assert 'run librarian-2, continued from it, answered' in output


@pytest.mark.packaging
def test_a_checkout_installs_with_its_storage_core_from_packages(tmp_path: Path) -> None:
    # `uv pip install -e '.[cli]'`, as the README says: the storage core comes from packages/, editable.
    python = fresh_venv(tmp_path / 'venv', '-e', f'{ROOT}[cli]')
    where = run([python, '-c', 'import pydantic_s3_cas, typer; print(pydantic_s3_cas.__file__)'], tmp_path)
    assert where.strip() == str(ROOT / 'packages/pydantic-s3-cas/src/pydantic_s3_cas/__init__.py')


def check_workflows(folder: Path) -> subprocess.CompletedProcess[str]:
    """`./dev`'s workflow checks on the workflows in `folder`, with this environment's tools."""
    return subprocess.run(
        ['bash', '-c', f'set -euo pipefail; source ./dev; check_workflows {folder}'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, 'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}'},
        check=False,
    )


def test_the_workflows_pass_their_checks_which_refuse_an_unpinned_action_or_a_schema_error(tmp_path: Path) -> None:
    real = check_workflows(ROOT / '.github/workflows')
    assert real.returncode == 0, real.stdout + real.stderr
    ci = (ROOT / '.github/workflows/ci.yml').read_text()
    unpinned = tmp_path / 'unpinned'
    unpinned.mkdir()
    (unpinned / 'ci.yml').write_text(re.sub(r'actions/checkout@[0-9a-f]{40}', 'actions/checkout@v4', ci))
    refused = check_workflows(unpinned)
    assert refused.returncode != 0 and 'unpinned-uses' in refused.stdout + refused.stderr
    invalid = tmp_path / 'invalid'
    invalid.mkdir()
    (invalid / 'ci.yml').write_text(ci.replace('runs-on:', 'runs_on:'))
    refused = check_workflows(invalid)
    assert refused.returncode != 0 and "'runs-on' is a required property" in refused.stdout

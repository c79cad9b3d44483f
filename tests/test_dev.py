"""`./dev`, the front door: it degrades with a visible reason when an optional prerequisite is missing.

The functions of `dev` are called one at a time (the script only defines them when sourced), so that these
tests neither install nor run the whole suite.
"""

from __future__ import annotations as _annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE_INDEX = 'http://127.0.0.1:9/simple/'


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def dev(script: str, **env: str) -> Done:
    """Run bash `script` with the functions of `./dev` defined, in the repository."""
    done = subprocess.run(
        ['bash', '-c', f'set -euo pipefail; source ./dev; {script}'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    return Done(done.returncode, done.stdout, done.stderr)


def test_without_node_the_npm_install_is_skipped_with_the_reason() -> None:
    done = dev('PATH=/nonexistent; install_npm_packages; echo still running')
    assert (done.code, done.stdout) == (0, 'still running\n'), done.stderr
    assert 'SKIPPED npm ci (tests/serverless): node/npm not on PATH' in done.stderr


def test_without_a_package_index_checkov_is_skipped_with_the_reason() -> None:
    done = dev('check_terraform_security', PIP_INDEX_URL=UNREACHABLE_INDEX)
    assert done.code == 0, done.stderr
    assert f'SKIPPED checkov: package index {UNREACHABLE_INDEX} unreachable' in done.stderr


def test_without_a_package_index_the_packaging_tests_are_skipped_with_the_reason() -> None:
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'packaging', 'tests/test_packaging.py'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, 'PIP_INDEX_URL': UNREACHABLE_INDEX},
    )
    assert done.returncode == 0, done.stdout
    assert '2 skipped' in done.stdout
    assert f'package index {UNREACHABLE_INDEX} unreachable' in done.stdout


def test_lowest_versions_pass_runs_only_for_a_full_run() -> None:
    # A stub stands in for the real pass, to see whether it would run.
    stub = 'ensure_venv() { echo "would run the lowest-versions pass"; exit 0; }'
    selected = dev(f'{stub}; lowest_versions -k persistence')
    assert 'would run' not in selected.stdout
    assert "SKIPPED lowest-versions pass: pytest arguments given; run './dev test' alone, or set LOWEST=1" in (
        selected.stderr
    )
    assert 'would run' in dev(f'{stub}; lowest_versions').stdout
    assert 'would run' in dev(f'{stub}; lowest_versions -k persistence', LOWEST='1').stdout
    assert 'SKIPPED lowest-versions pass: SKIP_LOWEST=1' in dev(f'{stub}; lowest_versions', SKIP_LOWEST='1').stderr


def test_the_install_shows_its_progress(tmp_path: Path) -> None:
    # A fake interpreter records what it is asked to do, so the install's own output is all that is seen.
    fake = tmp_path / 'python'
    fake.write_text(
        '#!/usr/bin/env bash\n'
        'if [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi\n'
        f'echo "$*" >>{tmp_path}/calls\n'
    )
    fake.chmod(0o755)
    done = dev(f'find_python() {{ echo {fake}; }}; ensure_venv {tmp_path}/venv')
    assert done.code == 0, done.stderr
    assert [line.split(']')[0].strip() for line in done.stderr.splitlines()[1:]] == ['[1/3', '[2/3', '[3/3']
    uv_install = (tmp_path / 'calls').read_text().splitlines()[-1]
    assert uv_install.startswith('-m uv pip install') and '--quiet' not in uv_install
    assert dev(f'ensure_venv {tmp_path}/venv').stderr == ''  # installed: nothing to do, nothing said


def test_help_exits_0_and_lists_every_command() -> None:
    script = (ROOT / 'dev').read_text()
    main = script[script.index('main() {') :]
    commands = re.findall(r'^    ([a-z][a-z-]*)(?: \|[^)]*)?\)$', main, flags=re.MULTILINE)
    assert {'demo', 'test', 'test-ai', 'docs', 'help'} <= set(commands)
    done = subprocess.run([ROOT / 'dev', '--help'], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for command in commands:
        assert f'./dev {command}' in done.stdout
    assert 'set -euo' not in done.stdout
    assert 'two' not in script.split('set -euo', 1)[0]

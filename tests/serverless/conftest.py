from __future__ import annotations

from pathlib import Path

import pytest

from .stepfunctions import node_executable


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    """Where the fake worker keeps its scripted runs (FAKE_WORKER_DIR)."""
    directory = tmp_path / 'worker'
    directory.mkdir()
    return directory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'needs_node: runs node with the npm packages of tests/serverless')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Only a missing node binary skips; missing npm packages fail, so CI cannot pass without really running them.
    if node_executable() is not None:
        return
    skip = pytest.mark.skip(reason='node is not installed (needed for asl-validator and aws-local-stepfunctions)')
    for item in items:
        if 'needs_node' in item.keywords:
            item.add_marker(skip)

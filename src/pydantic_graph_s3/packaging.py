"""Lambda deployment packages: this library, its dependencies built for the Lambda platform, and handler modules.

Dependencies are installed with `pip install --platform manylinux... --only-binary=:all: --target`, so a package
built on macOS or Windows, or on x86_64 for arm64, holds the Linux wheels the Lambda runtime can load. The library
itself, and the storage core it shares with pydantic-ai-harness-s3 (`pydantic-s3-cas`), are copied from where they
are imported from (an installed wheel or a source checkout), and the zip is
deterministic: the same inputs give the same bytes, so Terraform's `source_code_hash` only changes with the code.
"""

from __future__ import annotations as _annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ('LambdaPackage', 'PackagingError', 'build_lambda_package', 'library_requirements')

Architecture = Literal['x86_64', 'arm64']

_MACHINES: dict[str, str] = {'x86_64': 'x86_64', 'arm64': 'aarch64'}
# 1980-01-01, the earliest time a zip entry can carry: no build time leaks into the bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED = frozenset({'__pycache__'})
# Our own distributions, copied as source rather than installed from an index: distribution -> import package.
_OWN_DISTRIBUTIONS = {'pydantic-graph-s3': 'pydantic_graph_s3', 'pydantic-s3-cas': 'pydantic_s3_cas'}


class PackagingError(RuntimeError):
    """The package could not be built; the message carries pip's own output."""


@dataclass(frozen=True)
class LambdaPackage:
    """What goes into a Lambda deployment package, and for which platform."""

    output: Path
    """The .zip to write."""
    include: Sequence[Path] = ()
    """Handler modules (`my_handler.py`) or packages (directories) to put at the root of the zip."""
    requirements: Sequence[str] = ()
    """What the handler needs besides this library, as pip requirement strings."""
    architecture: Architecture = 'arm64'
    """The Lambda function's architecture."""
    python_version: str = '3.12'
    """The Lambda runtime's Python version (`python3.12` -> `3.12`)."""
    pip: Sequence[str] = field(default_factory=lambda: (sys.executable, '-m', 'pip'))
    """The pip command to run."""
    pip_options: Sequence[str] = ()
    """More pip options, such as `--index-url` or `--constraint`."""

    def __post_init__(self) -> None:
        if self.output.suffix != '.zip':
            raise ValueError(f'the package must be a .zip file, not {self.output}')
        if self.architecture not in _MACHINES:
            raise ValueError(f'architecture must be x86_64 or arm64, not {self.architecture!r}')
        missing = [str(path) for path in self.include if not path.exists()]
        if missing:
            raise ValueError(f'nothing to include at {", ".join(missing)}')

    def pip_command(self, target: Path) -> list[str]:
        machine = _MACHINES[self.architecture]
        return [
            *self.pip,
            'install',
            '--target',
            str(target),
            # Lambda's Python 3.12+ runtimes run on Amazon Linux 2023 (glibc 2.34): manylinux2014 and 2_28 load.
            '--platform',
            f'manylinux2014_{machine}',
            '--platform',
            f'manylinux_2_28_{machine}',
            '--implementation',
            'cp',
            '--python-version',
            self.python_version,
            '--only-binary=:all:',
            # Bytecode compiled here would be for this interpreter, not the runtime's.
            '--no-compile',
            '--disable-pip-version-check',
            '--quiet',
            *self.pip_options,
            *library_requirements(),
            *self.requirements,
        ]


def library_requirements() -> list[str]:
    """The runtime requirements of this library and of its storage core, which the package carries as source.

    Extras are for the command line and tests, not Lambda.
    """
    requirements: list[str] = []
    for distribution in _OWN_DISTRIBUTIONS:
        for requirement in importlib.metadata.requires(distribution) or []:
            name = requirement.split(';')[0].split('[')[0].split('>')[0].split('<')[0].split('=')[0].strip()
            if 'extra ==' not in requirement and name.lower() not in _OWN_DISTRIBUTIONS:
                requirements.append(requirement)
    return requirements


def build_lambda_package(package: LambdaPackage) -> Path:
    """Build `package.output` and return its path."""
    with tempfile.TemporaryDirectory(prefix='pydantic-graph-s3-package-') as scratch:
        root = Path(scratch) / 'package'
        root.mkdir()
        _pip_install(package, root)
        for package_name in _OWN_DISTRIBUTIONS.values():
            _copy(_package_directory(package_name), root / package_name)
        for path in package.include:
            _copy(path.resolve(), root / path.name)
        package.output.parent.mkdir(parents=True, exist_ok=True)
        _write_zip(root, package.output)
    return package.output


def _package_directory(package_name: str) -> Path:
    spec = importlib.util.find_spec(package_name)
    if spec is None or spec.origin is None:
        raise PackagingError(f'{package_name} is not importable here: install it first')
    return Path(spec.origin).resolve().parent


def _pip_install(package: LambdaPackage, target: Path) -> None:
    completed = subprocess.run(
        package.pip_command(target),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, 'PIP_NO_INPUT': '1'},
    )
    if completed.returncode != 0:
        raise PackagingError(
            f'pip could not install the dependencies for {package.architecture}, Python {package.python_version} '
            f'(exit {completed.returncode}):\n{completed.stderr.strip() or completed.stdout.strip()}'
        )


def _copy(source: Path, destination: Path) -> None:
    if destination.exists():
        raise PackagingError(f'{destination.name} is in the package twice (from {source} and a dependency)')
    if source.is_dir():
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*_SKIPPED, '*.pyc'))
    else:
        shutil.copy2(source, destination)


def _write_zip(root: Path, output: Path) -> None:
    partial = output.with_name(output.name + '.partial')
    with zipfile.ZipFile(partial, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in _files(root):
            entry = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            # Lambda runs the code as another user: everything must be world-readable.
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            entry.external_attr = (0o100000 | mode) << 16
            archive.writestr(entry, path.read_bytes())
    # Never leave a half-written zip where Terraform would pick it up.
    partial.replace(output)


def _files(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in _SKIPPED)
        for name in sorted(files):
            if not name.endswith('.pyc'):
                yield Path(directory) / name

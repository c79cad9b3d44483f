"""Read the Terraform configuration with python-hcl2 into plain dicts, for assertions about how it is wired."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

from .stepfunctions import MODULE_DIR, REPO_ROOT

TERRAFORM_DIR = REPO_ROOT / 'terraform'
EXAMPLE_DIR = TERRAFORM_DIR / 'examples' / 'count-down'

_OPTIONS = SerializationOptions(with_comments=True, explicit_blocks=False, strip_string_quotes=True)
_BLOCK_LABELLED = ('resource', 'data')


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _normalise(value: Any) -> Any:
    # Block labels keep their quotes even with strip_string_quotes.
    if isinstance(value, dict):
        return {unquote(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def expression(value: Any) -> str:
    """The HCL expression of a single-interpolation string: `${var.x}` gives `var.x`."""
    assert isinstance(value, str), value
    match = re.fullmatch(r'\$\{(.*)\}', value, flags=re.DOTALL)
    assert match is not None, f'{value!r} is not a single interpolation'
    return match.group(1)


@dataclass(frozen=True)
class Module:
    directory: Path
    # type -> name -> body, for resources and data sources alike
    resources: dict[str, dict[str, dict[str, Any]]]
    data: dict[str, dict[str, dict[str, Any]]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    modules: dict[str, dict[str, Any]]
    texts: dict[str, str]

    def resource(self, type_: str, name: str) -> dict[str, Any]:
        return self.resources[type_][name]

    def text_without(self, *file_names: str) -> str:
        return '\n'.join(text for name, text in self.texts.items() if name not in file_names)


@cache
def load_module(directory: Path) -> Module:
    resources: dict[str, dict[str, dict[str, Any]]] = {}
    data: dict[str, dict[str, dict[str, Any]]] = {}
    variables: dict[str, dict[str, Any]] = {}
    locals_: dict[str, Any] = {}
    outputs: dict[str, dict[str, Any]] = {}
    modules: dict[str, dict[str, Any]] = {}
    texts: dict[str, str] = {}
    for path in sorted(directory.glob('*.tf')):
        texts[path.name] = path.read_text()
        parsed = _normalise(hcl2.loads(texts[path.name], serialization_options=_OPTIONS))
        for kind, target in (('resource', resources), ('data', data)):
            for block in parsed.get(kind, []):
                for type_, by_name in block.items():
                    for name, body in by_name.items():
                        assert name not in target.setdefault(type_, {}), f'duplicate {kind} {type_}.{name}'
                        target[type_][name] = body
        for block in parsed.get('variable', []):
            variables.update(block)
        for block in parsed.get('locals', []):
            locals_.update({k: v for k, v in block.items() if not k.startswith('__')})
        for block in parsed.get('output', []):
            outputs.update(block)
        for block in parsed.get('module', []):
            modules.update(block)
    return Module(directory, resources, data, variables, locals_, outputs, modules, texts)


def module() -> Module:
    return load_module(MODULE_DIR)


def example() -> Module:
    return load_module(EXAMPLE_DIR)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]

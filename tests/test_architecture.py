"""The package's structure: layers in data-flow order, no import cycles, methods named only in their
own folders, and a short top level (docs/architecture.md describes each rule)."""

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from safeclip_sdk.methods import available_methods, get_method
from safeclip_sdk.model.spaces import COSINE

ROOT = Path(__file__).resolve().parent.parent
# the repository keeps cli/ and integrations/ at its top level; they install as safeclip_sdk.cli/.integrations
MAPPED = {"safeclip_sdk": ROOT / "safeclip_sdk", "safeclip_sdk/cli": ROOT / "cli",
          "safeclip_sdk/integrations": ROOT / "integrations"}


def _installed_layout(tmp_path: Path) -> Path:
    """The package as it installs (cli/ and integrations/ inside it), for import-linter to read."""
    for target, source in MAPPED.items():
        shutil.copytree(source, tmp_path / target, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_import_linter_contracts_hold(tmp_path):
    """The layers contract and the no-cycles contract of pyproject.toml, checked by import-linter."""
    staged = _installed_layout(tmp_path)
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=staged,
                            env={"PYTHONPATH": str(staged), "PATH": str(Path(sys.executable).parent)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_import_linter_sees_an_upward_import(tmp_path):
    """The contract can fail: a data module importing the runtime breaks it."""
    staged = _installed_layout(tmp_path)
    bad = staged / "safeclip_sdk" / "data" / "upward.py"
    bad.write_text("from ..runtime.encoder import Encoder\n")
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=staged,
                            env={"PYTHONPATH": str(staged), "PATH": str(Path(sys.executable).parent)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "safeclip_sdk.data.upward -> safeclip_sdk.runtime.encoder" in result.stdout


def _method_words() -> re.Pattern:
    """Every registered method's name, config section, folder, display name and non-cosine spaces."""
    words = set()
    for name in available_methods():
        method = get_method(name)
        words |= {name, method.section, method.__module__.split(".")[2], method.display_name}
        words |= {kind for kind in method.space_kinds if kind != COSINE}
    return re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")(?![\w-])",
                      re.IGNORECASE)


def _code_tokens(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the names and string literals of a module, leaving out docstrings and comments."""
    source = path.read_text(encoding="utf-8")
    docstrings = {node.body[0].value.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [(token.start[0], token.string) for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type in (tokenize.NAME, tokenize.STRING)
            and not (token.type == tokenize.STRING and token.start[0] in docstrings)]


def test_no_module_outside_a_methods_folder_names_a_method():
    """A method is found through the registry and the model's metadata, never by its name."""
    pattern = _method_words()
    method_folders = {ROOT / "safeclip_sdk" / "methods" / get_method(name).__module__.split(".")[2]
                      for name in available_methods()}
    registry = ROOT / "safeclip_sdk" / "methods" / "__init__.py"  # it lists the built-in methods to load
    offenders = []
    for folder in MAPPED.values():
        for path in sorted(folder.rglob("*.py")):
            if path == registry or any(parent in method_folders for parent in path.parents):
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in _code_tokens(path)
                          if pattern.search(text)]
    assert offenders == []


def test_the_check_finds_a_method_name(tmp_path):
    module = tmp_path / "branchy.py"
    module.write_text('"""Docstrings may mention HySAC."""\n\nif method == "hysac":  # so may comments: Safe-CLIP\n'
                      '    pass\n')
    assert [text for _, text in _code_tokens(module) if _method_words().search(text)] == ['"hysac"']


@pytest.mark.parametrize("folder", ["safeclip_sdk"])
def test_the_top_level_stays_short(folder):
    modules = sorted(path.name for path in (ROOT / folder).glob("*.py"))
    assert len(modules) <= 10, modules

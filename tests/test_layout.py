"""The package's layout: no import cycles between its modules (hidden ones in functions included), and the
import paths earlier versions documented still lead to the moved modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ctm._moved

PACKAGE = Path(ctm.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ctm_imports(path: Path, modules: set[str]) -> set[str]:
    """The ctm modules `path` imports anywhere (at the top or inside functions), outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    name, is_package = module_name(path), path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import engine` imports the module ctm.nn.engine
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: ctm_imports(path, set(paths)) for name, path in paths.items()}
    assert len(graph) > 40 and graph["ctm.nn.model"] >= {"ctm.nn.engine", "ctm.nn.outputs"}  # the walk sees imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_moved_module_exists_at_its_new_path():
    for old, new in ctm._moved.MOVED.items():
        assert (PACKAGE / (new.replace(".", "/") + ".py")).is_file(), (old, new)
        assert not (PACKAGE / f"{old}.py").exists(), old


def test_old_import_paths_lead_to_the_moved_modules_with_a_warning():
    code = """
import warnings
warnings.simplefilter("error")
import ctm
import ctm.runs.checkpoint as new
try:
    import ctm.checkpoint
except DeprecationWarning as w:
    print(w)
warnings.simplefilter("ignore")
import ctm.checkpoint as old
from ctm.view import write_viewer
from ctm.lstm import LSTMBaseline
import ctm.pictures.viewer, ctm.nn.lstm
print(old is new, old.__name__, old.__spec__.name, write_viewer is ctm.pictures.viewer.write_viewer,
      LSTMBaseline is ctm.nn.lstm.LSTMBaseline, ctm.engine is __import__("ctm.nn.engine").nn.engine)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == [
        "ctm.checkpoint moved to ctm.runs.checkpoint; import it from there",
        "True ctm.runs.checkpoint ctm.runs.checkpoint True True True"], out

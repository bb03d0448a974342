"""The architecture as checked facts: the import-linter contracts, no import cycles between modules,
function-local imports only where an optional dependency needs them (with a reason), and size limits.

The layers themselves are in pyproject.toml (`[tool.importlinter]`, also run by `make test`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
MALM = ROOT / "malm"
# The base install (pyproject `dependencies`): importing these is not an optional dependency.
BASE = {"numpy", "PIL", "hnswlib", "typer", "rich", "click"}
# The command line loads these at start-up (and what they import at their top): any third-party import
# there costs every command. (`malm data synth` registers commands/synth.py's command when the CLI starts.)
STARTUP_ROOTS = ("malm.cli", "malm.commands.synth")
CLI_FRAMEWORK = {"typer", "click", "rich"}  # loaded by any command line start
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 450
# Over the limits today, with who shrinks them; an entry that fits again must be removed from here.
KNOWN_LARGE: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in MALM.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base.pop()
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads (`from pkg import submodule` loads the submodule; a name that
    a package loads lazily, declared under its TYPE_CHECKING, loads the module it comes from)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = _resolve(module, node)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else _lazy_names(base).get(a.name, base)
            for a in node.names]


@cache
def _lazy_names(package: str) -> dict[str, str]:
    if package not in MODULES or MODULES[package].name != "__init__.py":
        return {}
    out = {}
    for node in _tree(package).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    out.update({a.asname or a.name: _resolve(package, stmt) for a in stmt.names})
    return out


def _top_level_imports(module: str, anywhere: bool = False) -> set[str]:
    """What importing `module` imports at once (not inside functions, not under TYPE_CHECKING); `anywhere`:
    also what its functions import when they run."""
    out: set[str] = set()
    if anywhere:
        for node in ast.walk(_tree(module)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.update(_targets(module, node))
        return out

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.update(_targets(module, node))
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(_tree(module).body)
    return out


def _module_of(name: str) -> str:
    """The malm module an import names (`from malm.x import y`: y may be a name in malm.x, not a module)."""
    return name if name in MODULES else name.rsplit(".", 1)[0]


def _is_third_party(top: str) -> bool:
    return top not in sys.stdlib_module_names and top != "__future__"


@cache
def third_party(module: str) -> frozenset[str]:
    """Third-party packages that importing `module` loads (transitively, its parent packages included)."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in MODULES:
            continue
        seen.add(mod)
        todo.extend(".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1))
        for name in _top_level_imports(mod):
            top = name.split(".")[0]
            if top == "malm":
                todo.append(_module_of(name))
            elif _is_third_party(top):
                found.add(top)
    return frozenset(found)


@cache
def third_party_in_use(module: str) -> frozenset[str]:
    """`third_party`, plus what the module's functions import when they run (one level down)."""
    found = set(third_party(module))
    for name in _top_level_imports(module, anywhere=True):
        top = name.split(".")[0]
        if top == "malm":
            found |= third_party(_module_of(name))
        elif _is_third_party(top):
            found.add(top)
    return frozenset(found)


@cache
def startup_modules() -> frozenset[str]:
    seen: set[str] = set()
    todo = list(STARTUP_ROOTS)
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in MODULES:
            continue
        seen.add(mod)
        todo.extend(".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1))
        todo.extend(_module_of(n) for n in _top_level_imports(mod) if n.startswith("malm"))
    return frozenset(seen)


def _function_local_imports() -> Iterator[tuple[str, int, str, bool]]:
    """(module, line, imported malm module, has a reason) of each import of malm's own modules in a function.

    The reason is a `#` comment on the import's lines or on the line above its block of consecutive imports.
    """
    seen = set()
    for module in MODULES:
        lines = MODULES[module].read_text().splitlines()
        for fn in ast.walk(_tree(module)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for body in (getattr(n, f, None) for n in ast.walk(fn) for f in ("body", "orelse", "finalbody")):
                block_start = None
                for stmt in body if isinstance(body, list) else ():
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        block_start = None
                        continue
                    block_start = block_start or stmt.lineno
                    own = lines[stmt.lineno - 1:stmt.end_lineno or stmt.lineno]
                    reason = lines[block_start - 2].strip().startswith("#") or any("#" in t for t in own)
                    for target in _targets(module, stmt):
                        if target.split(".")[0] == "malm" and (module, stmt.lineno, target) not in seen:
                            seen.add((module, stmt.lineno, target))
                            yield module, stmt.lineno, target, reason


def test_import_linter_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_between_modules() -> None:
    """Module level, function-local imports included (grimp counts them): import-linter checks packages."""
    graph = grimp.build_graph("malm", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself


def test_function_local_imports_only_for_an_optional_dependency() -> None:
    """A malm module imported inside a function must load a dependency its importer does not (torch, onnx,
    ...; for the command line any third-party package its command uses, which would slow every command's
    start), and say why."""
    unneeded, unexplained = [], []
    for module, line, target, reason in _function_local_imports():
        if module in startup_modules():
            extra = third_party_in_use(target) - third_party(module) - CLI_FRAMEWORK
        else:
            extra = third_party(target) - third_party(module) - BASE
        where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        if not extra:
            unneeded.append(where)
        elif not reason:
            unexplained.append(f"{where} (loads {', '.join(sorted(extra))})")
    assert not unneeded, "import these at the top of the module:\n" + "\n".join(unneeded)
    assert not unexplained, "give these a one-line reason comment:\n" + "\n".join(unexplained)


def test_the_command_line_starts_without_heavy_imports() -> None:
    """`malm --help` and every command's start load typer and rich only: the rest loads when a command runs."""
    code = ("import sys, malm.cli; heavy = {'numpy', 'PIL', 'hnswlib', 'onnxruntime', 'torch', 'onnx'} & set(sys.modules); "
            "assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]


def _sizes() -> Iterator[tuple[str, int, int]]:
    """(name, lines, limit) of every module and function in malm/."""
    for module, path in MODULES.items():
        rel = path.relative_to(ROOT).as_posix()
        yield rel, len(path.read_text().splitlines()), MAX_MODULE_LINES
        for fn in ast.walk(_tree(module)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
                yield f"{rel}::{fn.name}", (fn.end_lineno or fn.lineno) - start + 1, MAX_FUNCTION_LINES


def test_function_and_module_sizes() -> None:
    sizes = {name: (n, limit) for name, n, limit in _sizes()}
    over = sorted(f"{name}: {n} lines (limit {limit})" for name, (n, limit) in sizes.items()
                  if n > limit and name not in KNOWN_LARGE)
    fixed = sorted(name for name in KNOWN_LARGE if name not in sizes or sizes[name][0] <= sizes[name][1])
    assert not over, "split these:\n" + "\n".join(over)
    assert not fixed, f"within the limits now, remove from KNOWN_LARGE: {fixed}"


def _worked_examples() -> dict[str, str]:
    """The code blocks of docs/architecture.md marked `<!-- worked-example: NAME -->`."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    return dict(re.findall(r"<!-- worked-example: (\S+) -->\n```python\n(.*?)```", text, re.S))


# Runs in a fresh interpreter: the two table rows go into the registry modules' source, as a contributor
# writes them, and the modules go where the page says (on the packages' search path).
WORKED_EXAMPLE = """
import importlib.util, json, sys

def with_row(name, anchor, row):
    path = importlib.util.find_spec(name).origin
    src = open(path).read()
    end = src.index("\\n}\\n", src.index(anchor))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None, origin=path))
    sys.modules[name] = module
    exec(compile(src[:end] + "\\n" + row.rstrip() + src[end:], path, "exec"), module.__dict__)

ex, tmp, bundle, photo = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with_row("malm.export.registry", "TARGETS: dict[str, Target] = {", ex["TARGETS"])
with_row("malm.sdk.backends.registry", "BACKENDS: dict[str, Backend] = {", ex["BACKENDS"])
import malm.export.targets, malm.sdk.backends
malm.export.targets.__path__.append(tmp + "/targets")
malm.sdk.backends.__path__.append(tmp + "/backends")

from typer.testing import CliRunner
from malm.cli import app
from malm.errors import MalmError
from malm.export.registry import TARGETS, ExportOptions

run = CliRunner().invoke
assert "torchscript" in run(app, ["export", "-h"], env={"COLUMNS": "200"}).output
assert TARGETS["torchscript"].build.__module__ == "malm.export.targets.torchscript"
try:
    ExportOptions(target="torchscript", int8=True)
    raise AssertionError("--int8 accepted")
except MalmError as e:
    assert "--int8 is not supported by --target torchscript" in str(e), e
assert "ort-cpu" in run(app, ["query", "-h"], env={"COLUMNS": "200"}).output
doctor = json.loads(run(app, ["doctor", "--json"]).output)
assert doctor["backends"]["ort-cpu"]["available"] is True, doctor["backends"]
r = run(app, ["query", photo, "--bundle", bundle, "--backend", "ort-cpu", "--json", "-k", "3"])
assert r.exit_code == 0, r.output
answer = json.loads(r.output)
assert len(answer["results"][0]["hits"]) == 3 and answer["encoder"]["device"] == "CPUExecutionProvider", answer
print("worked examples ok")
"""


def test_the_worked_examples_of_architecture_md_build(tmp_path: Path) -> None:
    """Adding an export target or an SDK backend is a module and a table row: the page's own example works."""
    from _sdk_bundle import make_bundle, photo

    examples = _worked_examples()
    assert set(examples) == {"malm/export/targets/torchscript.py", "TARGETS", "malm/sdk/backends/ort_cpu.py",
                             "BACKENDS"}
    for kind, name in (("targets", "torchscript.py"), ("backends", "ort_cpu.py")):
        (tmp_path / kind).mkdir()
        module = next(text for path, text in examples.items() if path.endswith(name))
        (tmp_path / kind / name).write_text(module)
    bundle = make_bundle(tmp_path / "bundle", 12)
    picture = tmp_path / "dish.jpg"
    photo(3).save(picture)
    p = subprocess.run([sys.executable, "-c", WORKED_EXAMPLE, json.dumps(examples), str(tmp_path), str(bundle),
                        str(picture)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "MALM_NO_PROGRESS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "worked examples ok" in p.stdout

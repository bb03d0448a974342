"""The training package stays readable: no function over 80 lines, no module over 450 (docstrings and comments
count; a decorator's lines count with its function)."""

from __future__ import annotations

import ast
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[1] / "malm" / "training"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
# Known exceptions, each with its reason (empty this when they are split).
ALLOWED: dict[str, int] = {}


def _functions(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((node.name, node.end_lineno - start + 1))  # type: ignore[operator]
    return out


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(lines per module, lines per function as "module:function") of malm/training."""
    modules, functions = {}, {}
    for path in sorted(TRAINING.rglob("*.py")):
        name = str(path.relative_to(TRAINING.parent.parent))
        text = path.read_text()
        modules[name] = len(text.splitlines())
        for fn, n in _functions(ast.parse(text)):
            functions[f"{name}:{fn}"] = max(n, functions.get(f"{name}:{fn}", 0))
    return modules, functions


def test_no_training_function_over_80_lines_and_no_module_over_450() -> None:
    modules, functions = sizes()
    long_modules = {k: v for k, v in modules.items() if v > MAX_MODULE_LINES}
    long_functions = {k: v for k, v in functions.items() if v > ALLOWED.get(k, MAX_FUNCTION_LINES)}
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_the_train_loop_entry_is_at_most_60_lines() -> None:
    _, functions = sizes()
    assert functions["malm/training/train.py:_run"] <= 60


if __name__ == "__main__":  # python tests/test_training_code_size.py: the ten largest of each
    mods, fns = sizes()
    for table in (mods, fns):
        for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:10]:
            print(f"{v:5d}  {k}")
        print()

"""The layering rules, checked two ways: every import statement in the source (lazy ones inside functions too), and
what importing every module of a layer really loads in a fresh interpreter.

- runtime: numpy, OpenCV and one backend; never torch/TensorFlow/ONNX tooling, never export, models, benchmarks or datasets;
- benchmarks: runtime and data; never export or models (they measure bundles, they do not make them);
- targets: data only (the standard library and the shared contracts);
- contracts: the standard library only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchao", "tensorflow", "litert_torch", "onnx", "onnxslim", "ai_edge_quantizer", "matplotlib")
RULES = {
    "runtime": HEAVY + ("tddfa_edge.export", "tddfa_edge.models", "tddfa_edge.benchmarks", "tddfa_edge.datasets"),
    "benchmarks": ("torch", "torchao", "tensorflow", "litert_torch", "onnx", "onnxslim", "tddfa_edge.export", "tddfa_edge.models"),
    "targets": ("numpy", "cv2", "tddfa_edge.runtime", "tddfa_edge.export", "tddfa_edge.models", "tddfa_edge.benchmarks"),
    "contracts": ("numpy", "cv2", "tddfa_edge.runtime", "tddfa_edge.targets", "tddfa_edge.export", "tddfa_edge.models",
                  "tddfa_edge.benchmarks", "tddfa_edge.datasets"),
}
# matplotlib is an optional plot dependency of the benchmarks, imported only when a CED plot is asked for.
LAZY_ALLOWED = {"benchmarks": ("matplotlib",)}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file of tddfa_edge.<package>."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = f"tddfa_edge.{package}".split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module))
    return found


def _forbidden(name: str, rules: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rules)


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_forbidden_import_statement(package):
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path, package):
            if _forbidden(name, RULES[package]):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", sorted(RULES))
def test_importing_the_layer_loads_nothing_forbidden(package):
    modules = sorted(f"tddfa_edge.{package}" + ("" if p.stem == "__init__" else f".{p.stem}") for p in (ROOT / package).glob("*.py"))
    watched = tuple(r for r in RULES[package] if r not in LAZY_ALLOWED.get(package, ()))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if any(m == r or m.startswith(r + '.') for r in {watched!r}))\n"
        "print(' '.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing tddfa_edge.{package} loaded: {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_the_rules_catch_a_violation(tmp_path):
    """The scanner itself: a lazy import inside a function is found."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from tddfa_edge.export import exporter\n    import torch\n")
    names = [n for _, n in _imports(source, "runtime")]
    assert [n for n in names if _forbidden(n, RULES["runtime"])] == ["tddfa_edge.export", "torch"]

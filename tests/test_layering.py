"""Package structure: no module imports from a layer above it; pure-torch code imports without the extension."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparseyolo"

#: Layers, lowest first. A module may import from its own layer and the ones below, never from one above. A module
#: belongs to the longest prefix listed; a new top-level module must be placed here.
LAYERS: list[tuple[str, ...]] = [
    ("sparseyolo._version", "sparseyolo.utils", "sparseyolo.assets"),
    ("sparseyolo.extension", "sparseyolo._C", "sparseyolo._meta_registrations", "sparseyolo.ops"),
    ("sparseyolo.models", "sparseyolo.data"),
    ("sparseyolo.prune",),
    ("sparseyolo.checkpoint", "sparseyolo.sparse"),
    ("sparseyolo", "sparseyolo.train", "sparseyolo.val"),  # the package root re-exports checkpoint and sparse
    ("sparseyolo.plots",),
    ("sparseyolo.dense_runtimes", "sparseyolo.bench", "sparseyolo.demo", "sparseyolo.export", "sparseyolo.detect"),
    ("sparseyolo.cli", "sparseyolo.__main__"),
]


def _layer(module: str) -> int:
    best, level = "", None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, level = name, i
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return level


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file() or name.endswith("._C")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every sparseyolo import in the file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sparseyolo"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sparseyolo":
            for a in node.names:  # `from sparseyolo import ops` imports the module sparseyolo.ops
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else node.module))
    return found


def test_layers_are_known():
    for path in sorted(PACKAGE.rglob("*.py")):
        _layer(_module_name(path))


def test_no_module_imports_from_a_layer_above():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for line, imported in _imports(path):
            if _layer(imported) > _layer(importer):
                violations.append(f"{path.relative_to(ROOT)}:{line}: {importer} (layer {_layer(importer)}) imports "
                                  f"{imported} (layer {_layer(imported)})")
    assert not violations, "imports from a layer above:\n" + "\n".join(violations)


def test_the_layer_check_sees_lazy_imports():
    """The check itself: an import inside a function counts (a test that cannot fail would prove nothing)."""
    imports = dict((m, line) for line, m in _imports(PACKAGE / "demo.py"))
    assert "sparseyolo.plots" in imports and "sparseyolo.utils.timing" in imports
    assert _layer("sparseyolo.plots") < _layer("sparseyolo.demo") < _layer("sparseyolo.cli")


_BLOCK_EXTENSION = """
import importlib.abc, sys

class _NoExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sparseyolo._C":
            raise ImportError("sparseyolo._C blocked by the test")
        return None

sys.meta_path.insert(0, _NoExtension())
"""


def _run_without_extension(code: str) -> subprocess.CompletedProcess:
    script = _BLOCK_EXTENSION + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_pure_torch_pruning_imports_without_the_extension():
    proc = _run_without_extension("""
        import sys
        import torch
        import sparseyolo.ops
        import sparseyolo.prune, sparseyolo.prune.calibrated, sparseyolo.prune.config
        from sparseyolo.prune import PruneConfig, global_sparsity, l1_unstructured_, masked_sparsity
        assert "sparseyolo._C" not in sys.modules
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3))
        l1_unstructured_(model, 0.5)  # pure torch
        assert global_sparsity(model) > 0.4 and masked_sparsity(model) == 0.0
        assert PruneConfig.from_spec("2:4").n == 2
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_op_without_the_extension_says_how_to_build_it():
    proc = _run_without_extension("""
        import torch
        from sparseyolo import ops
        from sparseyolo.extension import ExtensionNotBuiltError
        try:
            ops.box_iou(torch.zeros(1, 4), torch.zeros(1, 4))
        except ExtensionNotBuiltError as e:
            print(e)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "sparseyolo._C" in proc.stdout and "pip install" in proc.stdout


@pytest.mark.parametrize("module", ["sparseyolo.plots", "sparseyolo.bench", "sparseyolo.demo"])
def test_figures_and_bench_import_alone(module):
    """plots no longer imports demo (the bench -> plots -> demo cycle): each imports on its own."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr

"""The README's two commands: `make demo` and `make test` set up .venv once, then run the demo / the suite."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> list[str]:
    """The commands `make -n` would run from a state where nothing is set up (-B: every target out of date)."""
    # --no-print-directory: under `make test` (CI) this make is a sub-make and would print "Entering directory"
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("target, last", [("demo", "-m sparseyolo demo"), ("test", "-m pytest -q tests")])
def test_target_sets_up_then_runs(tmp_path, target, last):
    venv = tmp_path / "venv"
    lines = _dry_run(target, f"VENV={venv}")
    assert lines[0] == f"python3 -m venv {venv}"
    text = "\n".join(lines)
    assert "pip install -q torch==2.14.1 torchvision==0.29.1" in text
    assert re.search(r'pip install -q --no-build-isolation -e "\.\[test,bench\]"', text)
    assert f"touch {venv}/.sparseyolo-built" in text
    assert lines[-1] == f"{venv}/bin/python {last}"


def test_existing_environment_is_used_as_is(tmp_path):
    assert _dry_run("test", f"VENV={tmp_path}", "SETUP=") == [f"{tmp_path}/bin/python -m pytest -q tests"]


def test_readme_and_ci_run_the_same_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^FORCE_CUDA=1 make setup$", ci, re.M)

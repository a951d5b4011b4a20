"""benchmarks/pattern_study.py's table and the accuracy/speed plot, from made-up measurements (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows() -> list[dict]:
    def row(name, m, speedup, ap=None):
        return {"name": name, "command": f"sparseyolo prune {name}", "map50_95": m, "coco_ap": ap, "file_mb": 2.5,
                "dense_runtime": "openvino", "dense_ms": 20.0, "auto_ms": 20.0 / speedup, "speedup": speedup}

    return [row("dense", 0.300, 1.0, 0.31), row("a", 0.150, 1.2), row("b", 0.240, 0.9, 0.25)]


def test_markdown_shares_and_speedups():
    sys.path.insert(0, str(ROOT))
    from benchmarks.pattern_study import markdown

    rows = _rows()
    text = markdown(rows, rows[0], {"machine": "cpu", "threads": 2, "reps": 3, "date": "d", "command": "cmd"})
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 0.150 | 50% | - |" in lines["a"] and "1.20x" in lines["a"] and "16.7" in lines["a"]
    assert "| 0.240 | 80% | 0.250 |" in lines["b"] and "0.90x" in lines["b"]
    assert "`sparseyolo prune b`" in text and "`cmd`" in text


def test_accuracy_vs_speed_plot(tmp_path):
    from sparseyolo.plots import plot_accuracy_vs_speed

    rows = _rows()
    path = plot_accuracy_vs_speed([(r["name"], r["speedup"], r["map50_95"]) for r in rows[1:]], 0.3,
                                  tmp_path / "p.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000

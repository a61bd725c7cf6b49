"""The caption-clip loader benchmark (benchmarks/textloader.py) runs end to end at a tiny size
and reports consistent numbers (its real results: benchmarks/results/textloader.md)."""
from __future__ import annotations

import json

from benchmarks.textloader import main


def test_textloader_benchmark_tiny(tmp_path):
    assert main(["--videos", "8", "--seconds", "40", "--epochs", "1", "--batches", "1",
                 "--workers", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "textloader.json").read_text())
    assert r["videos"] == 8 and r["captions"] > 8 * 5
    assert r["loader"]["clips"] == 8 * 4                     # one batch of 8 videos x 4 clips
    assert r["train"]["steps"] == 1 and 0.0 <= r["train"]["data_wait"] <= 1.0
    assert r["data_wait_target_met"] == (r["train"]["data_wait"] < 0.10)
    assert "data-wait while training" in (tmp_path / "textloader.md").read_text()

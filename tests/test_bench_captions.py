"""The caption.json streaming benchmark (benchmarks/captions.py) at tiny sizes: the generator writes
what it says it wrote, and the driver's results agree with it and with themselves."""
from __future__ import annotations

import json
import pytest

from benchmarks import captions as bench


def test_generator_writes_what_it_reports(tmp_path):
    path = tmp_path / "caption.json"
    truth = bench.generate(path, 300_000, seed=4)
    assert truth["bytes"] == path.stat().st_size and abs(truth["bytes"] - 300_000) < 20_000
    data = json.loads(path.read_text(encoding="utf-8"))
    assert len(data) == truth["videos"] > 10
    assert sum(len(v["text"]) for v in data.values()) == truth["captions"]
    empty = 0
    for vid, v in data.items():
        assert len(vid) == 11 and set(vid) <= set(bench.ID_CHARS)
        assert set(v) == {"start", "end", "text"}
        assert 50 <= len(v["text"]) == len(v["start"]) == len(v["end"]) <= 150
        for s, e, t in zip(v["start"], v["end"], v["text"]):
            assert s >= 0 and (e == s or 2.0 - 1e-3 <= e - s <= 6.0 + 1e-3)
            empty += e == s
            assert 3 <= len(t.split(" ")) <= 12
        assert v["start"] == sorted(v["start"])
    assert empty == truth["empty_span"] > 0
    text = path.read_text(encoding="utf-8")
    assert "\\u" in text and "é" in text            # escaped and raw non-ASCII both occur
    again = tmp_path / "again.json"
    assert bench.generate(again, 300_000, seed=4) == truth
    assert again.read_bytes() == path.read_bytes()
    bench.generate(again, 300_000, seed=5)
    assert again.read_bytes() != path.read_bytes()


def test_driver_at_tiny_sizes(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    rc = bench.main(["--sizes", "1,5", "--reads", "100", "--out", str(out), "--work", str(work)])
    res = json.loads((out / "captions.json").read_text())
    acc = res["acceptance"]
    assert rc == (0 if acc["pass"] else 1)
    assert set(res["runs"]) == {"1MB", "5MB"}
    for key, mb in (("1MB", 1e6), ("5MB", 5e6)):
        run = res["runs"][key]
        g, ing, rd = run["generate"], run["ingest"], run["read"]
        assert abs(g["bytes"] - mb) < 20_000 and run["match"] is True
        c = ing["counts"]
        assert c["entries"] == c["videos"] == g["videos"] == rd["videos"]
        assert c["captions_read"] == g["captions"]
        assert c["captions"] == g["captions"] - g["empty_span"]
        assert ing["skipped"]["empty_span"] == g["empty_span"]
        assert sum(ing["skipped"].values()) == g["empty_span"]
        assert ing["peak_mib"] >= ing["baseline_mib"] > 0 and ing["wall_s"] > 0
        assert ing["mb_per_s"] == pytest.approx(g["bytes"] / 1e6 / ing["wall_s"])
        assert rd["reads"] == 100 and rd["captions_read"] >= 100 * 50
        assert 0 < rd["ms_median"] <= rd["ms_p90"] <= rd["ms_p99"] <= rd["ms_max"]
    big, small = res["runs"]["5MB"]["ingest"], res["runs"]["1MB"]["ingest"]
    assert (acc["small"], acc["big"]) == ("1MB", "5MB")
    assert acc["ratio"] == pytest.approx(big["peak_mib"] / small["peak_mib"])
    assert acc["pass"] == (acc["ratio"] <= bench.LIMIT)
    md = (out / "captions.md").read_text()
    assert "## Acceptance" in md and f"{acc['ratio']:.3f}" in md
    assert "| counts match the generator | yes | yes |" in md
    assert not list(work.iterdir())                 # generated files and stores removed


def test_acceptance_verdicts():
    def run(nbytes, peak):
        return {"generate": {"bytes": nbytes}, "ingest": {"peak_mib": peak}}
    ok = bench.acceptance({"a": run(10, 100.0), "b": run(1000, 119.0)})
    assert ok["pass"] and ok["ratio"] == pytest.approx(1.19) and ok["big"] == "b"
    assert not bench.acceptance({"a": run(10, 100.0), "b": run(1000, 121.0)})["pass"]
    failed = bench.acceptance({"a": run(10, 100.0),
                               "b": {"generate": {"bytes": 1000}, "ingest": {"error": "x"}}})
    assert failed["ratio"] is None and not failed["pass"]

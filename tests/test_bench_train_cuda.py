"""The GPU training benchmark (issue 17) prepared on the CPU: `python -m benchmarks.train
--paper` at tiny sizes gives the full per-step breakdown of the real loop for each precision the
device has, the page-cache tools work, the synthetic project runs under the train stage, and
benchmarks/gpu_check.sh parses and calls only commands and options that exist."""
from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys

import pytest

from benchmarks.synthetic_store import BYTES_PER_SECOND, evict, make_project, \
    resident_fraction
from benchmarks.train import MODELS
from benchmarks.train_paper import PHASES, filesystem
from pipeline.config import to_dict
from tests.conftest import ROOT
from tests.test_docs import check_command

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
N, M, WARMUP, STEPS = 2, 2, 1, 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks.train", "--paper", "--device", "cpu", "--model",
           "tiny", "--n", str(N), "--m", str(M), "--seconds", "20", "--steps", str(STEPS),
           "--warmup", str(WARMUP), "--workers", "1", "--threads", "1", "--gen-workers", "1",
           "--loader-batches", "2", "--store", str(d / "store"), "--results", str(d / "res")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return d, json.loads((d / "res" / "train-cpu.json").read_text())


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_each_precision_has_the_whole_step_breakdown(bench, precision):
    e = bench[1]["precisions"][precision]
    assert "skipped" not in e and "error" not in e, e
    assert e["steps"] == STEPS and e["stopped_by"] == "steps" and e["finite"]
    assert e["clips_per_step"] == N * M and len(e["losses"]) == WARMUP + STEPS
    assert set(e["phases_s"]) == set(PHASES) and min(e["phases_s"].values()) >= 0
    assert e["phases_s"]["forward"] > 0 and e["phases_s"]["backward"] > 0
    # the parts make the step, and the loop's own clock (log.jsonl) measured the same steps
    assert sum(e["phases_s"].values()) == pytest.approx(e["step_s"], rel=1e-6)
    assert sum(e["phases_frac"].values()) == pytest.approx(1.0)
    assert e["step_s"] == pytest.approx(e["loop_step_s"], rel=0.02)
    assert e["clips_per_s"] == pytest.approx(N * M / e["step_s"], rel=1e-6) and e["clips_per_s"] > 0
    assert e["data_wait"] == pytest.approx(e["phases_frac"]["data"]) and 0 <= e["data_wait"] < 1
    assert len(e["per_step"]) == STEPS
    assert statistics.mean(sum(s.values()) for s in e["per_step"]) == \
        pytest.approx(e["step_s"], rel=1e-3)
    assert "peak_gpu_mem_gib" not in e and e["peak_rss_gib"] > 0


def test_fp16_is_skipped_on_the_cpu_with_its_reason(bench):
    e = bench[1]["precisions"]["fp16"]
    assert "GradScaler" in e["skipped"] and "clips_per_s" not in e


def test_store_sized_for_one_epoch_results_tagged_by_device(bench):
    d, r = bench
    need = N * (WARMUP + STEPS)
    assert r["store"]["videos"] == need == r["store"]["videos_used"]
    assert r["store"]["bytes"] >= need * 20 * BYTES_PER_SECOND
    assert r["config"]["clips_per_batch"] == N * M and r["config"]["model"]["embed_dim"] == 32
    assert r["loader"]["batches"] == 2 and r["loader"]["clips"] == 2 * N * M
    # never train.json / train.md (the CPU data-path comparison's)
    assert sorted(p.name for p in (d / "res").iterdir()) == ["train-cpu.json", "train-cpu.md"]
    md = (d / "res" / "train-cpu.md").read_text()
    for row in ("| float32 | ", "| bf16 | ", "| fp16 | skipped: "):
        assert row in md
    assert "data-wait" in md and "NOT met" in md          # 13,300 clips/s: not on a CPU


def test_store_is_reused_when_big_enough(bench, tmp_path):
    d, _ = bench
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train", "--paper", "--device", "cpu", "--model",
         "tiny", "--n", str(N), "--m", str(M), "--steps", "1", "--warmup", "1",
         "--workers", "0", "--threads", "1", "--precisions", "bf16", "--store", str(d / "store"),
         "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "train-cpu.json").read_text())
    assert r["store"]["reused"] and list(r["precisions"]) == ["bf16"]
    assert r["precisions"]["bf16"]["steps"] == 1


def test_evict_drops_a_file_from_the_page_cache(tmp_path):
    if filesystem(tmp_path) == "tmpfs":
        pytest.skip("tmpfs pages never leave the cache")
    f = tmp_path / "blob"
    f.write_bytes(os.urandom(8 << 20))
    f.read_bytes()
    before = resident_fraction([f])
    if before is None:
        pytest.skip("mincore cannot tell here")
    assert before > 0.9
    rec = evict([f], system=False)
    assert rec["method"] == "fadvise" and rec["drop_caches_error"]
    assert rec["resident_before"] > 0.9 and rec["resident_after"] < 0.1
    f.read_bytes()
    assert resident_fraction([f]) > 0.9


def test_synthetic_project_runs_under_the_train_stage(tmp_path):
    from stages.train import main
    params = make_project(tmp_path, to_dict(MODELS["tiny"]), "cpu", videos=12, seconds=20,
                          workers=0)
    p = tmp_path
    rc = main(["--params", str(params), "--features", str(p / "features"), "--manifest",
               str(p / "manifest"), "--out", str(p / "models" / "pretrain")])
    assert rc == 0
    rows = [json.loads(x) for x in (p / "models/pretrain/log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["clips"] == 8 * 4       # 8 train videos x 4 windows
    assert (p / "models/pretrain/final.pt").is_file()
    assert (p / "manifest" / "availability.parquet").is_file()   # evaluate reads it


def script_commands() -> list[list[str]]:
    """The project commands gpu_check.sh runs (benchmarks.train, stages under torchrun or
    not), as argv with shell values replaced by a placeholder and option arrays dropped."""
    text = re.sub(r"\\\n\s*", " ", SCRIPT.read_text())
    out = []
    for line in text.splitlines():
        m = re.search(r'"\$PY" -m (benchmarks\.train|stages\.\w+|torch\.distributed\.run)'
                      r'(.*)$', line)
        if not m:
            continue
        args = [a for a in shlex.split(m.group(2)) if not re.fullmatch(r"\$\{?\w+(\[@\])?\}?", a)]
        args = ["x" if "$" in a else a for a in args]
        if m.group(1) == "torch.distributed.run":
            if "-m" not in args:
                continue                  # the DDP probe: a script of its own
            out.append(["torchrun", *args])
        else:
            out.append(["python", "-m", m.group(1), *args])
    return out


def test_device_script_parses_and_calls_what_exists():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    cmds = script_commands()
    names = [c[2] if c[0] == "python" else c[c.index("-m") + 1] for c in cmds]
    assert names == ["benchmarks.train", "benchmarks.train", "stages.train", "stages.finetune",
                     "stages.evaluate"]
    for argv in cmds:
        assert check_command(argv) is None, (argv, check_command(argv))
    # the check bites: a stale option would be caught
    assert check_command([*cmds[0], "--no-such-option"]) is not None
    assert check_command([*cmds[3], "--no-such-option"]) is not None

"""Fault injection for training, fine-tuning and evaluation (issue 18): damaged checkpoints are
moved aside (never deleted) and the run falls back to the previous good one; damaged shards,
models of another config, missing models, bad ledgers, full disks and read-only folders stop a
stage with exit 2 and one log line naming the file, finished files left byte-identical."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.learn.avdata import PretrainVideos, collate_videos
from pipeline.download.ledger import AVAILABILITY_SCHEMA
from pipeline.safety import DiskSpaceError, free_bytes
from pipeline.features.store import FeatureStore, ShardWriter, StoreError, VideoRecord, write_index
from pipeline.learn.train import (CHECKPOINT, CHECKSUMS, FINAL, PREVIOUS, CheckpointError,
                            TrainError, load_checkpoint, train)
from stages import evaluate as evaluate_stage
from stages import finetune as finetune_stage
from stages import train as train_stage
from tests.conftest import ROOT
from tests.test_evaluate import _arrays
from tests.test_train import TINY, Separable, collate

KW = dict(items_per_batch=8, epochs=2, lr=1e-3, lr_decay=0.9)     # 3 steps per epoch (n=24)
P1 = dataclasses.replace(TINY, checkpoint_every=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: faster than two on a shared 2-core machine, and the same results."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def contents(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (the lock file excepted)."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".avl-writer.lock"}


def one_error(caplog, *names) -> str:
    """The stage logged exactly one error: one line, no traceback, naming each of `names`."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    msg = errors[0].getMessage()
    assert "\n" not in msg and errors[0].exc_info is None, msg
    assert "Traceback" not in caplog.text
    for n in names:
        assert str(n) in msg, (n, msg)
    return msg


def equal_models(a: Path, b: Path) -> None:
    x, y = torch.load(a)["model"], torch.load(b)["model"]
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


def overwrite(path: Path, at: int, n: int = 64) -> None:
    """n bytes at offset `at` replaced (the file keeps its size)."""
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(n)
        f.seek(at)
        f.write(bytes((b ^ 0x5A) for b in old))


def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted run (checkpoint every step): the reference for resumed ones."""
    d = tmp_path_factory.mktemp("whole") / "run"
    train(d, Separable(n=24), collate, P1, **KW)
    return d


def cut_run(d: Path, steps: int) -> None:
    out = train(d, Separable(n=24), collate, P1, stop_after_steps=steps, **KW)
    assert out["stopped_at"] == steps


# --------------------------------------------------------------------------- checkpoints


def test_every_checkpoint_has_its_sha256_recorded(whole):
    rec = json.loads((whole / CHECKSUMS).read_text())
    assert set(rec["files"]) == {CHECKPOINT, PREVIOUS, FINAL}
    for name, entry in rec["files"].items():
        assert entry["sha256"] == sha(whole / name)
        assert entry["bytes"] == (whole / name).stat().st_size
    assert rec["files"][CHECKPOINT]["global_step"] == 6
    assert rec["files"][PREVIOUS]["global_step"] == 5       # the fall-back is kept
    assert not list(whole.glob("*.part"))


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
        tmp_path, whole, damage, caplog):
    d = tmp_path / "run"
    cut_run(d, 4)
    if damage == "truncate":
        truncate(d / CHECKPOINT)
    else:      # 64 bytes inside the model's tensors: torch.load alone would not notice
        overwrite(d / CHECKPOINT, (d / CHECKPOINT).stat().st_size // 2)
    damaged = sha(d / CHECKPOINT)
    train(d, Separable(n=24), collate, P1, **KW)
    stale = list(d.glob("stale/*/" + CHECKPOINT))
    assert len(stale) == 1 and sha(stale[0]) == damaged      # moved aside, byte-identical
    assert "differs from the one recorded" in caplog.text
    assert "resuming from the previous checkpoint" in caplog.text
    equal_models(whole / FINAL, d / FINAL)                    # the same model in the end
    steps = [json.loads(x)["step"] for x in (d / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_no_good_checkpoint_left_starts_over_with_a_warning(tmp_path, whole, caplog):
    d = tmp_path / "run"
    cut_run(d, 2)
    truncate(d / CHECKPOINT)
    overwrite(d / PREVIOUS, 100)
    before = {sha(d / n) for n in (CHECKPOINT, PREVIOUS, "log.jsonl")}
    train(d, Separable(n=24), collate, P1, **KW)              # never blocked
    assert before <= {sha(p) for p in d.glob("stale/*/*")}
    assert "no good checkpoint left: starting this run over" in caplog.text
    assert {p.name for p in d.glob("stale/*/*")} >= {CHECKPOINT, PREVIOUS, "log.jsonl"}
    equal_models(whole / FINAL, d / FINAL)


def test_a_checkpoint_without_a_record_is_checked_by_loading(tmp_path, whole):
    """Run folders from before checksums (no checksums.json) resume if the file loads."""
    d = tmp_path / "run"
    cut_run(d, 4)
    (d / CHECKSUMS).unlink()
    (d / PREVIOUS).unlink()
    train(d, Separable(n=24), collate, P1, **KW)
    equal_models(whole / FINAL, d / FINAL)
    assert not (d / "stale").exists()
    rec = json.loads((d / CHECKSUMS).read_text())
    assert rec["files"][FINAL]["sha256"] == sha(d / FINAL)


def test_kill_between_the_record_and_the_renames_loses_nothing(tmp_path, whole, monkeypatch):
    """The record names the new checkpoint before the renames: a kill there must leave every
    file on disk recognised as good (none moved aside as corrupt)."""
    import pipeline.learn.train as pt
    d = tmp_path / "run"
    cut_run(d, 2)
    real = os.replace

    class Killed(BaseException):
        pass

    def kill_at_rotation(src, dst):
        if Path(dst).name == PREVIOUS:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(pt.os, "replace", kill_at_rotation)
    with pytest.raises(Killed):
        train(d, Separable(n=24), collate, P1, **KW)
    monkeypatch.undo()
    assert (d / "checkpoint.pt.part").is_file()
    train(d, Separable(n=24), collate, P1, **KW)
    assert not (d / "stale").exists()
    equal_models(whole / FINAL, d / FINAL)


def test_free_space_floor_at_start_keeps_the_checkpoint(tmp_path):
    d = tmp_path / "run"
    cut_run(d, 3)
    before = contents(d)
    floor = free_bytes(d) / 1e9 + 1.0
    with pytest.raises(DiskSpaceError, match="train.min_free_gb"):
        train(d, Separable(n=24), collate, dataclasses.replace(P1, min_free_gb=floor), **KW)
    assert contents(d) == before


def test_free_space_floor_before_a_checkpoint_write_keeps_the_last_good_one(tmp_path):
    """The disk fills up during the run (a real 300 MB file): the next checkpoint is not
    written, the run stops with DiskSpaceError, the last good checkpoint stays."""
    d = tmp_path / "run"
    cut_run(d, 2)
    before = {n: sha(d / n) for n in (CHECKPOINT, PREVIOUS, CHECKSUMS)}
    floor = (free_bytes(d) - 150e6) / 1e9
    ballast = tmp_path / "ballast"

    def fill(row):
        if row["step"] == 3 and not ballast.exists():
            with open(ballast, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, 300_000_000)

    try:
        with pytest.raises(DiskSpaceError, match="train.min_free_gb"):
            train(d, Separable(n=24), collate, dataclasses.replace(P1, min_free_gb=floor),
                  on_step=fill, **KW)
    finally:
        ballast.unlink(missing_ok=True)
    assert {n: sha(d / n) for n in (CHECKPOINT, PREVIOUS, CHECKSUMS)} == before
    assert torch.load(d / CHECKPOINT, weights_only=False)["global_step"] == 2
    assert not list(d.glob("*.part"))


def test_init_checkpoint_of_another_config_is_one_line(tmp_path, whole):
    other = dataclasses.replace(P1, model=dataclasses.replace(P1.model, embed_dim=16))
    with pytest.raises(TrainError) as e:
        train(tmp_path / "ft", Separable(n=24), collate, other, init_from=whole / FINAL, **KW)
    msg = str(e.value)
    assert "\n" not in msg and str(whole / FINAL) in msg and "embed_dim 32 (here 16)" in msg
    assert not (tmp_path / "ft" / CHECKPOINT).exists()


def test_init_checkpoint_damaged_is_one_line_and_the_run_folder_untouched(tmp_path, whole):
    init = tmp_path / "init" / FINAL
    init.parent.mkdir()
    shutil.copy(whole / FINAL, init)
    shutil.copy(whole / CHECKSUMS, init.parent / CHECKSUMS)
    ft = tmp_path / "ft"
    train(ft, Separable(n=24), collate, P1, init_from=init, stop_after_steps=2, **KW)
    before = contents(ft)
    truncate(init)
    with pytest.raises(CheckpointError) as e:
        train(ft, Separable(n=24), collate, P1, init_from=init, restart_on_change=True, **KW)
    assert "\n" not in str(e.value) and str(init) in str(e.value)
    assert contents(ft) == before          # nothing moved for a replacement that cannot start


def test_load_checkpoint_names_the_file(tmp_path, whole):
    p = tmp_path / FINAL
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(p)
    assert load_checkpoint(whole / FINAL)[1] == sha(whole / FINAL)


# --------------------------------------------------------------------------- shards in workers


def _store(d: Path, n: int = 8, seconds: int = 6) -> Path:
    rng = np.random.default_rng(0)
    w = ShardWriter(d / "shard-00000.h5", {"dtype": "float16"})
    for i in range(n):
        w.add(VideoRecord(f"synthvid{i:03d}", "ok", {}, _arrays(i % 3, seconds, rng)))
    write_index(w.close(), d / "index.parquet")
    return d


def test_a_shard_failing_inside_a_loader_worker_is_one_line(tmp_path):
    """PyTorch re-raises a worker's exception with the worker's traceback as its message: the
    run must still end with one line naming the shard."""
    store = FeatureStore(_store(tmp_path / "features"), verify="size")
    ds = PretrainVideos(store, store.ids(), clips_per_video=2, window_frames=200)
    shard = tmp_path / "features" / "shard-00000.h5"
    truncate(shard, 0.3)                     # damaged after the store was opened and checked
    p = dataclasses.replace(TINY, workers=1)
    with pytest.raises(StoreError) as e:
        train(tmp_path / "run", ds, collate_videos, p, items_per_batch=2, epochs=1, lr=1e-3,
              lr_decay=1.0)
    msg = str(e.value)
    assert "\n" not in msg and str(shard) in msg and "Traceback" not in msg


# --------------------------------------------------------------------------- the stages


TINY_TRAIN = {"videos_per_batch": 2, "clips_per_video": 2, "epochs": 1, "workers": 0,
              "window_s": 2, "checkpoint_every": 1, "min_free_gb": 0.0, "device": "cpu",
              "model": {"embed_dim": 16, "head": "gating", "audio_widths": [8, 8, 16, 16],
                        "loss": "mms", "mms_margin": 0.001, "ranking_margin": 0.1,
                        "temperature": 0.1, "video_norm": "batchnorm"}}


def _params(d: Path, train_: dict | None = None, evaluate_: dict | None = None) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"].update({**TINY_TRAIN, **(train_ or {})})
    data["finetune"].update(batch=2, epochs=1)
    data["evaluate"].update(device="cpu", examples=1, **(evaluate_ or {}))
    f = d / "params.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return f


def _ledger(videos: list[dict]) -> pa.Table:
    rows = []
    for v in videos:
        r = {f.name: None for f in AVAILABILITY_SCHEMA}
        r.update(video_id=v["video_id"], url=v["url"], split=v["split"], status="available",
                 attempts=1)
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=AVAILABILITY_SCHEMA)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A store of 8 videos (6 train, 2 val), its manifest and ledger, and the three stages run
    once on it: models/pretrain, models/finetune-demo, reports/demo.*"""
    d = tmp_path_factory.mktemp("proj")
    _store(d / "features")
    m = d / "manifest"
    m.mkdir()
    videos = [{"video_id": f"synthvid{i:03d}", "url": f"file:v{i}", "split":
               "train" if i < 6 else "val", "duration_s": 6.0} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(videos), m / "videos.parquet")
    clips = [{"clip_id": f"{v['video_id']}:0", "video_id": v["video_id"], "split": v["split"],
              "start_s": 1.0, "end_s": 4.0, "text": "x", "source": "test"} for v in videos]
    pq.write_table(pa.Table.from_pylist(clips), m / "clips.parquet")
    (m / "manifest.json").write_text(json.dumps({"splits": {"train": {"clip_checksum": "t"},
                                                            "val": {"clip_checksum": "v"}}}))
    pq.write_table(_ledger(videos), m / "availability.parquet")
    params = _params(d)
    assert _train(d, params) == 0 and _finetune(d, params) == 0 and _evaluate(d, params) == 0
    return d


def _train(d: Path, params: Path) -> int:
    return train_stage.main(["--params", str(params), "--features", str(d / "features"),
                             "--manifest", str(d / "manifest"), "--out",
                             str(d / "models/pretrain")])


def _finetune(d: Path, params: Path) -> int:
    return finetune_stage.main(["--dataset", "demo", "--params", str(params), "--features",
                                str(d / "features"), "--manifest", str(d / "manifest"),
                                "--init", str(d / "models/pretrain" / FINAL),
                                "--out", str(d / "models/finetune-demo")])


def _evaluate(d: Path, params: Path) -> int:
    return evaluate_stage.main(["--dataset", "demo", "--params", str(params), "--features",
                                str(d / "features"), "--manifest", str(d / "manifest"),
                                "--models", str(d / "models"), "--out", str(d / "reports")])


@pytest.fixture
def proj(project, tmp_path) -> Path:
    """A copy of the finished project to damage."""
    d = tmp_path / "p"
    shutil.copytree(project, d)
    return d


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_stage_on_a_truncated_shard_is_one_line(proj, stage, caplog):
    shard = proj / "features" / "shard-00000.h5"
    truncate(shard, 0.6)
    if stage == "train":     # one epoch more: the finished run resumes and reads the store
        params = _params(proj, {"epochs": 2, "verify": "size"})
        before = contents(proj / "models")
        assert _train(proj, params) == 2
    else:
        params = _params(proj, evaluate_={"verify": "size"})
        before = contents(proj / "reports")
        assert _evaluate(proj, params) == 2
    one_error(caplog, shard)
    assert contents(proj / ("models" if stage == "train" else "reports")) == before


def test_train_stage_resumes_past_a_damaged_checkpoint(project, proj, caplog):
    run = proj / "models/pretrain"
    overwrite(run / CHECKPOINT, 200)
    damaged = sha(run / CHECKPOINT)
    assert _train(proj, _params(proj)) == 0
    assert [sha(p) for p in run.glob(f"stale/*/{CHECKPOINT}")] == [damaged]
    equal_models(project / "models/pretrain" / FINAL, run / FINAL)
    rec = json.loads((run / CHECKSUMS).read_text())
    assert rec["files"][FINAL]["sha256"] == sha(run / FINAL)


def test_finetune_stage_from_a_model_of_another_config_is_one_line(proj, caplog):
    run = proj / "models/finetune-demo"
    before = contents(run)
    params = _params(proj, {"model": {**TINY_TRAIN["model"], "embed_dim": 8,
                                      "audio_widths": [8, 8, 8, 8]}})
    assert _finetune(proj, params) == 2
    msg = one_error(caplog, proj / "models/pretrain" / FINAL, "embed_dim 16 (here 8)")
    assert "audio_widths" in msg
    assert contents(run) == before


def test_finetune_stage_from_a_damaged_model_is_one_line(proj, caplog):
    init = proj / "models/pretrain" / FINAL
    overwrite(init, 300)
    before = contents(proj / "models")
    assert _finetune(proj, _params(proj)) == 2
    one_error(caplog, init, "differs from the one recorded")
    assert contents(proj / "models") == before


def test_evaluate_stage_with_a_missing_model_fails_unless_allowed(proj, caplog):
    reports = contents(proj / "reports")
    ft = proj / "models/finetune-demo" / FINAL
    ft.unlink()
    assert _evaluate(proj, _params(proj)) == 2
    one_error(caplog, ft, "allow_missing")
    assert contents(proj / "reports") == reports            # not rewritten on the error path
    caplog.clear()
    assert _evaluate(proj, _params(proj, evaluate_={"allow_missing": True})) == 0
    assert "no checkpoint for setting fine_tuned" in caplog.text
    flat = json.loads((proj / "reports/demo.json").read_text())
    assert "zero_shot/paper/audio_to_video_R@1" in flat and not any(k.startswith("fine_tuned")
                                                                     for k in flat)


def test_evaluate_stage_with_a_damaged_model_is_one_line(proj, caplog):
    reports = contents(proj / "reports")
    zs = proj / "models/pretrain" / FINAL
    truncate(zs, 0.9)
    damaged = sha(zs)
    assert _evaluate(proj, _params(proj)) == 2
    one_error(caplog, zs)
    assert contents(proj / "reports") == reports and sha(zs) == damaged


@pytest.mark.parametrize("ledger", [b"", b"PAR1 not parquet at all PAR1"])
def test_evaluate_stage_with_a_bad_ledger_is_one_line(proj, caplog, ledger):
    reports = contents(proj / "reports")
    path = proj / "manifest" / "availability.parquet"
    path.write_bytes(ledger)
    assert _evaluate(proj, _params(proj)) == 2
    one_error(caplog, path)
    assert contents(proj / "reports") == reports


def test_evaluate_stage_with_unsafe_ledger_rows_is_one_line(proj, caplog):
    path = proj / "manifest" / "availability.parquet"
    t = pq.read_table(path).to_pylist()
    t[0]["video_id"] = "../../evil"
    pq.write_table(pa.Table.from_pylist(t, schema=AVAILABILITY_SCHEMA), path)
    assert _evaluate(proj, _params(proj)) == 2
    one_error(caplog, path, "../../evil")


# --------------------------------------------------------------------------- read-only folders


@pytest.fixture
def read_only():
    """Makes folders unwritable for this process: mode 0555, or for root (which ignores modes)
    the immutable attribute; restored afterwards."""
    done = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            done.append(lambda: folder.chmod(0o755))
            return
        r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a folder read-only for root here: {r.stderr.strip()}")
        done.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))

    yield make
    for undo in done:
        undo()


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_read_only_output_folder_is_one_line(proj, read_only, stage, caplog):
    out = proj / ("models/pretrain" if stage == "train" else "reports")
    before = contents(out)
    read_only(out)
    if stage == "train":
        assert _train(proj, _params(proj, {"epochs": 2})) == 2
    else:
        assert _evaluate(proj, _params(proj)) == 2
    one_error(caplog, out, "not writable")
    assert contents(out) == before


def test_a_second_training_run_on_the_same_folder_stops_naming_the_first(proj, caplog):
    from tests.test_safety import _holder
    run = proj / "models/pretrain"
    before = contents(run)
    holder = _holder(run)
    try:
        assert _train(proj, _params(proj)) == 2
        one_error(caplog, run, f"pid {holder.pid}")
        assert contents(run) == before
    finally:
        holder.kill()
        holder.wait()

"""Training loop (pipeline/learn/train.py) and training data (pipeline/learn/avdata.py): a tiny AVLnet learns
separable data, a run stopped mid-epoch resumes to the same parameters, windows read the right
rows of a feature store."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pipeline.learn.avdata import AnnotatedClips, ClipRef, PretrainVideos, collate_videos
from pipeline.config import ModelParams, TrainParams
from pipeline.features.store import FeatureStore, ShardWriter, VideoRecord, write_index
from pipeline.evaluate.metrics import retrieval_metrics
from pipeline.learn.train import CHECKPOINT, TrainError, embed, epoch_batches, train
from tests.conftest import ROOT

TINY = TrainParams(model=ModelParams(embed_dim=32, audio_widths=[8, 8, 16, 16]), workers=0,
                   checkpoint_every=2, seed=1)


class Separable(Dataset):
    """K classes; each item's spectrogram and video vector carry its class's pattern + noise."""

    def __init__(self, n: int = 48, k: int = 8, frames: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a_proto = torch.randn(k, 40, 1, generator=g)
        self.v_proto = torch.randn(k, 4096, generator=g)
        self.labels = torch.arange(n) % k
        self.spec = self.a_proto[self.labels] + 0.5 * torch.randn(n, 40, frames, generator=g)
        self.video = self.v_proto[self.labels] + 0.5 * torch.randn(n, 4096, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"spec": self.spec[i], "nframes": torch.tensor(self.spec.shape[2]),
                "video": self.video[i]}


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_epoch_batches_are_seeded_and_drop_the_last_partial():
    a = epoch_batches(10, 3, seed=0, epoch=0)
    assert a == epoch_batches(10, 3, seed=0, epoch=0) and len(a) == 3
    assert a != epoch_batches(10, 3, seed=0, epoch=1)
    assert sorted(i for b in a for i in b) != list(range(10))     # one item left out


def test_tiny_config_learns_separable_data(tmp_path):
    data = Separable()
    from torch.utils.data import DataLoader
    from pipeline.learn.train import build_model
    losses = []
    train(tmp_path / "run", data, collate, TINY, items_per_batch=16, epochs=6, lr=1e-3,
          lr_decay=0.9, on_step=lambda r: losses.append(r["loss"]))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    model = build_model(TINY.model)
    model.load_state_dict(torch.load(tmp_path / "run" / "final.pt")["model"])
    e = embed(model, DataLoader(data, batch_size=16, collate_fn=collate), torch.device("cpu"))
    a, v = e["audio"], e["video"]
    r1 = retrieval_metrics(a, v)["available"]["audio_to_video_R@1"]
    assert r1 > 3 / len(data)                     # chance is 1/48 (same-class items tie-break)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 3 and {"loss", "lr", "clips_per_s", "data_wait"} <= set(rows[0])
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 0.9 ** 5)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_mid_epoch_gives_the_same_parameters(tmp_path):
    data = Separable(n=40)
    kw = dict(items_per_batch=8, epochs=2, lr=1e-3, lr_decay=0.9)
    train(tmp_path / "whole", data, collate, TINY, **kw)
    out = train(tmp_path / "cut", data, collate, TINY, stop_after_steps=3, **kw)
    assert out["stopped_at"] == 3                          # mid-epoch (5 steps per epoch)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)["step_in_epoch"] == 3
    # as a kill leaves it: a step logged after the checkpoint, then a torn line
    with open(tmp_path / "cut" / "log.jsonl", "a") as f:
        f.write('{"epoch": 0, "step": 4, "loss": 9.0}\n{"epoch": 0, "st')
    train(tmp_path / "cut", data, collate, TINY, **kw)     # resumes from the checkpoint
    rows = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    whole_rows = [json.loads(x) for x in
                  (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]
    a = torch.load(tmp_path / "whole" / "final.pt")["model"]
    b = torch.load(tmp_path / "cut" / "final.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_of_another_config_is_refused(tmp_path):
    data = Separable(n=16)
    train(tmp_path / "r", data, collate, TINY, items_per_batch=8, epochs=1, lr=1e-3,
          lr_decay=1.0)
    other = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, embed_dim=16))
    with pytest.raises(TrainError, match="model differ"):
        train(tmp_path / "r", data, collate, other, items_per_batch=8, epochs=2, lr=1e-3,
              lr_decay=1.0)
    # stages restart instead; more epochs with the same settings continue the run
    out = train(tmp_path / "r", data, collate, other, items_per_batch=8, epochs=1, lr=1e-3,
                lr_decay=1.0, restart_on_change=True)
    assert out["steps"] == 2
    out = train(tmp_path / "r", data, collate, other, items_per_batch=8, epochs=2, lr=1e-3,
                lr_decay=1.0, restart_on_change=True)
    assert out["steps"] == 4


def test_finished_run_on_changed_features_starts_over(tmp_path):
    """Same settings and as many items, other features (a video re-downloaded, say): the
    finished run in the folder must not pass for a model of the new data."""
    data = Separable(n=16)
    kw = dict(items_per_batch=8, epochs=1, lr=1e-3, lr_decay=1.0)
    first = train(tmp_path / "r", data, collate, TINY, provenance={"features_sha256": "a"}, **kw)
    again = train(tmp_path / "r", data, collate, TINY, provenance={"features_sha256": "a"}, **kw)
    assert again["steps"] == first["steps"] == 2 and again["loss"] == first["loss"]
    log_lines = (tmp_path / "r" / "log.jsonl").read_text().splitlines()
    with pytest.raises(TrainError, match="data differ"):
        train(tmp_path / "r", data, collate, TINY, provenance={"features_sha256": "b"}, **kw)
    train(tmp_path / "r", Separable(n=16, seed=5), collate, TINY,
          provenance={"features_sha256": "b"}, restart_on_change=True, **kw)
    state = torch.load(tmp_path / "r" / "final.pt", weights_only=False)
    assert state["provenance"]["features_sha256"] == "b"
    new_lines = (tmp_path / "r" / "log.jsonl").read_text().splitlines()
    assert len(new_lines) == len(log_lines) == 2 and new_lines != log_lines   # trained anew


def test_store_digest_names_the_features(tmp_path):
    def make(d, source):
        w = ShardWriter(d / "shard-00000.h5", {"dtype": "float16"})
        for vid in ("videoaaaaaa", "videobbbbbb"):
            arrays = {"resnet152": np.zeros((3, 2048), np.float16),
                      "resnext101": np.zeros((4, 2048), np.float16),
                      "logmel": np.zeros((40, 300), np.float16)}
            w.add(VideoRecord(vid, "ok", {"source_sha256": source + vid}, arrays))
        write_index(w.close(), d / "index.parquet")
        return FeatureStore(d)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make(tmp_path / "a", "x"), make(tmp_path / "b", "y")
    both = ["videobbbbbb", "videoaaaaaa"]
    assert a.digest(both) == a.digest(reversed(both)) == make(tmp_path / "a", "x").digest(both)
    assert a.digest(both) != b.digest(both)              # same ids and shapes, other media
    assert a.digest(both) != a.digest(["videoaaaaaa"])
    w = ShardWriter(tmp_path / "a" / "shard-00001.h5", {"dtype": "float16"})   # re-extracted
    w.add(VideoRecord("videobbbbbb", "ok", {"source_sha256": "xvideobbbbbb"},
                      {"resnet152": np.zeros((3, 2048), np.float16),
                       "resnext101": np.zeros((4, 2048), np.float16),
                       "logmel": np.zeros((40, 300), np.float16)}))
    rows = {r["video_id"]: r for r in a.index.to_pylist()}
    rows.update({r["video_id"]: r for r in w.close()})
    write_index(rows.values(), tmp_path / "a" / "index.parquet")
    assert FeatureStore(tmp_path / "a").digest(both) != a.digest(both)


# --------------------------------------------------------------------------- data from a store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two videos written straight into a store: 62.5 s (6250 frames, 63 / 94 rows) and 7.3 s;
    row r of every feature holds the value r (so windows can be checked), and one missing."""
    d = tmp_path_factory.mktemp("store")
    w = ShardWriter(d / "shard-00000.h5", {"dtype": "float16"})
    rows = []
    for vid, t, n2, n3 in (("longvideo01", 6250, 63, 94), ("shortvideo1", 730, 8, 11)):
        arrays = {"resnet152": np.tile(np.arange(n2, dtype=np.float16)[:, None], (1, 2048)),
                  "resnext101": np.tile(np.arange(n3, dtype=np.float16)[:, None], (1, 2048)),
                  "logmel": np.tile(-(np.arange(t) % 80).astype(np.float16), (40, 1))}
        w.add(VideoRecord(vid, "ok", {}, arrays))
    rows = w.close()
    rows.append({"video_id": "notextract1", "status": "not_downloaded"})
    write_index(rows, d / "index.parquet")
    return FeatureStore(d)


def test_pretrain_windows_read_the_right_rows(store):
    ds = PretrainVideos(store, ["longvideo01", "shortvideo1"], clips_per_video=6, seed=3)
    item = ds[0]
    assert item["spec"].shape == (6, 40, 1000) and item["video"].shape == (6, 4096)
    for j, s in enumerate(item["start_s"].int().tolist()):
        assert 0 <= s <= 50
        a0 = max(0, 100 * s - 2)
        want = -(np.arange(a0, a0 + 1000) % 80)
        assert np.array_equal(item["spec"][j, 0].numpy(), want)
        # max over inclusive rows s..s+10 (2D) and int(1.5 s)..int(1.5 (s+10)) (3D), normalised
        v = item["video"][j]
        assert torch.allclose(v[:2048], torch.full((2048,), 1 / np.sqrt(2048)), atol=1e-6)
    short = ds[1]
    assert (short["start_s"] == 0).all() and (short["nframes"] == 730).all()
    assert (short["spec"][:, :, 730:] == 0).all()
    again = PretrainVideos(store, ["longvideo01", "shortvideo1"], clips_per_video=6, seed=3)
    assert torch.equal(again[0]["spec"], item["spec"])          # (seed, epoch, index) only
    again.set_epoch(1)
    assert not torch.equal(again[0]["start_s"], item["start_s"])
    batch = collate_videos([ds[0], ds[1]])
    assert batch["spec"].shape == (12, 40, 1000) and batch["video_index"].tolist() == \
        [0] * 6 + [1] * 6


def test_annotated_clips_pad_crop_and_missing(store):
    clips = [ClipRef("c1", "longvideo01", 3.0, 13.5), ClipRef("c2", "shortvideo1", 0.0, 7.3),
             ClipRef("c3", "notextract1", 0.0, 5.0)]
    ds = AnnotatedClips(store, clips, frames=512)
    assert len(ds) == 2 and ds.missing == ["c3"]
    c = ds[0]
    assert c["spec"].shape == (40, 512) and c["nframes"].item() == 1050   # original length
    assert np.array_equal(c["spec"][0].numpy(), -(np.arange(300, 812) % 80))
    c = ds[1]                                        # 730 frames cropped to 512
    assert c["nframes"].item() == 730 and c["spec"].shape == (40, 512)
    long = AnnotatedClips(store, clips[1:2], frames=1024)[0]   # padded with 0 dB
    assert long["nframes"].item() == 730 and (long["spec"][:, 730:] == 0).all()


# --------------------------------------------------------------------------- subprocesses

RUN = """
import sys, dataclasses
from pathlib import Path
from tests.test_train import TINY, Separable, collate
from pipeline.learn.train import train
p = dataclasses.replace(TINY, checkpoint_every=1)
train(Path(sys.argv[1]), Separable(n=40), collate, p, items_per_batch=8, epochs=3, lr=1e-3,
      lr_decay=0.9)
"""


def _env():
    import os
    from tests.conftest import ROOT
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([sys.executable, "-c", RUN, str(whole)], env=_env(), check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(cut)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    log = cut / "log.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 7:   # mid epoch 2 (5/epoch)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "final.pt").exists()
    subprocess.run([sys.executable, "-c", RUN, str(cut)], env=_env(), check=True,
                   capture_output=True, timeout=300)
    a = torch.load(whole / "final.pt")["model"]
    b = torch.load(cut / "final.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [json.loads(x)["step"] for x in (whole / "log.jsonl").read_text().splitlines()]


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes (gloo): each rank takes its half of every global batch, the embeddings are
    gathered for the loss (the whole global batch as negatives), DDP averages the gradients,
    and rank 0 alone writes the log and checkpoints."""
    import subprocess
    import sys
    script = tmp_path / "ddp.py"
    script.write_text(RUN + """
import torch.distributed as dist, torch
dist.barrier()                       # rank 0 has written final.pt
m = torch.load(Path(sys.argv[1]) / "final.pt")["model"]
flat = torch.cat([v.flatten().float() for v in m.values()])
seen = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(seen, flat)          # every rank read the same file: one writer
assert all(torch.equal(seen[0], x) for x in seen)
sys.stdout.write(f"RANK {dist.get_rank()} OK of {dist.get_world_size()}\\n")  # one write
""")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script), str(tmp_path / "run")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RANK 0 OK" in out.stdout and "RANK 1 OK" in out.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 and rows[0]["clips"] == 8        # the global batch


RUN_ON_CPUS = """
import os, sys
os.sched_setaffinity(0, set(range(int(sys.argv[1]))))   # a machine with this many cores
import pathlib
from pipeline.config import ModelParams, TrainParams
from pipeline.learn.train import train
from tests.test_train import Separable, collate
p = TrainParams(model=ModelParams(embed_dim=64, audio_widths=[16, 16, 32, 32]), workers=0,
                checkpoint_every=100, seed=1, threads=int(sys.argv[2]))
train(pathlib.Path(sys.argv[3]), Separable(n=32, frames=128), collate, p, items_per_batch=16,
      epochs=2, lr=1e-3, lr_decay=0.9)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_pinned_threads_train_the_same_on_1_and_2_cores(tmp_path):
    """Float rounding depends on torch's thread count, which defaults to the cores: unpinned,
    a 1-core and a 2-core machine train different models; train.threads pins it."""
    def run(cpus: int, threads: int) -> dict:
        out = tmp_path / f"cpus{cpus}-threads{threads}"
        subprocess.run([sys.executable, "-c", RUN_ON_CPUS, str(cpus), str(threads), str(out)],
                       cwd=ROOT, check=True, capture_output=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        return torch.load(out / "final.pt", weights_only=False)["model"]

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(run(1, 0), run(2, 0))      # the difference the pin removes
    assert same(run(1, 2), run(2, 2))

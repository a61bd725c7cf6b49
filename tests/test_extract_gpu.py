"""Extraction on CUDA (marker gpu: `python -m pytest -m gpu`): the same features as on the CPU,
one LocalCluster worker per GPU, and reduced precision within a small distance."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from pipeline.config import ClusterParams
from pipeline.features.extract import extract
from pipeline.features.store import FeatureStore
from tests.test_extract import PARAMS, ledger, video

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    files = {"gpu_a______": video(root / "a.mp4", 12.5, size="640x360", rate=30),
             "gpu_b______": video(root / "b.mp4", 7, size="320x240", rate=30),
             "gpu_noaudio": video(root / "c.mp4", 3, audio=None)}
    return root, files


def _run(media, tmp_path, **kw):
    root, files = media
    p = dataclasses.replace(PARAMS, **kw)
    cluster = ClusterParams(workers=1, threads_per_worker=1, processes=True)
    s = extract("youcook2", ledger(root, files), tmp_path, p, cluster, root)
    return s, FeatureStore(tmp_path)


def test_cuda_features_match_cpu(media, tmp_path):
    _, cpu = _run(media, tmp_path / "cpu", device="cpu")
    s, gpu = _run(media, tmp_path / "gpu", device="auto")
    assert s["status"] == {"ok": 2, "no_audio_stream": 1}
    assert gpu.recipe["precision"] == "float32"
    for vid in cpu.ids(("ok", "no_audio_stream")):
        for feat in ("resnet152", "resnext101", "logmel"):
            a = cpu.read(vid, feat).astype(np.float32)
            b = gpu.read(vid, feat).astype(np.float32)
            assert a.shape == b.shape
            # TF32 is off by default for convolutions? cuDNN may use it: allow float16-level noise
            tol = 0.05 if feat == "logmel" else 5e-3
            assert np.abs(a - b).max(initial=0) < tol, (vid, feat, np.abs(a - b).max())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cuda(media, tmp_path, precision):
    _, ref = _run(media, tmp_path / "ref", device="cuda")
    _, low = _run(media, tmp_path / precision, device="cuda", precision=precision)
    assert low.recipe["precision"] == precision
    for vid in ref.ids():
        for feat in ("resnet152", "resnext101"):
            a, b = (s.read(vid, feat).astype(np.float32) for s in (ref, low))
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cos.min() > 0.99, (vid, feat, cos.min())

"""The extraction benchmark's measuring stick and the settings it led to: the reference recipe
(benchmarks/reference_extractor.py) gives our numbers, CPU batch sizes, the worker allocator."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.extract import weight_files
from benchmarks.reference_extractor import extract_2d, extract_3d, extract_audio
from pipeline.cluster import tune_allocator
from pipeline.config import ExtractParams
from pipeline.features.extract import ShardJob, batch_sizes, build_recipe, run_shard
from pipeline.features.store import FeatureStore, read_shard_rows, shard_name, write_index
from pipeline.features.weights import resolve_weights


def test_tune_allocator_takes_on_glibc():
    took = tune_allocator()
    assert set(took) == {"M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD"}
    if platform.libc_ver()[0] == "glibc":
        assert all(took.values()), took


@pytest.mark.parametrize("kw, cpu, cuda", [({}, (8, 4), (32, 8)),
                                           ({"batch_2d": 3, "batch_3d": 5}, (3, 5), (3, 5)),
                                           ({"batch_3d": 2}, (8, 2), (32, 2))])
def test_batch_sizes_auto_and_explicit(kw, cpu, cuda):
    p = ExtractParams(**kw)
    assert batch_sizes(p, "cpu") == cpu and batch_sizes(p, "cuda") == cuda


def test_reference_recipe_gives_our_numbers(tmp_path):
    """The benchmark compares speeds at equal numbers: the reference's separate passes, whole
    video in memory and batches of 64 give the features our single pass, streaming and small
    batches store (weights loaded from files in the official formats, 320x240, 3.5 s)."""
    video = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30:duration=3.5", "-f", "lavfi", "-i",
                    "sine=frequency=330:sample_rate=44100:duration=3.5", "-c:v", "libx264",
                    "-c:a", "aac", str(video)], check=True, timeout=60)
    f2, f3 = weight_files(tmp_path / "weights")
    p = ExtractParams(weights_2d=str(f2), weights_3d=str(f3), device="cpu", threads=2)
    recipe = build_recipe(p, resolve_weights("resnet152", str(f2))[1],
                          resolve_weights("resnext101", str(f3))[1])
    store = tmp_path / "store"
    store.mkdir()
    job = ShardJob(0, (("v", str(video), None),), p, (str(f2), str(f3)), recipe, str(store),
                   "test", 2)
    assert run_shard(job, emit=lambda ev: None) == {"ok": 1}
    _, rows = read_shard_rows(store / shard_name(0, p.format))
    write_index(rows, store / "index.parquet")
    reference = {"resnet152": extract_2d(str(video), str(f2)),
                 "resnext101": extract_3d(str(video), str(f3)),
                 "logmel": extract_audio(str(video))}
    with FeatureStore(store) as fs:
        for name, ref in reference.items():
            ours = fs.read("v", name).astype(np.float32)
            assert ours.shape == ref.shape, name
            # float16 rows: the batch size and memory format change only the last bits
            np.testing.assert_allclose(ours, ref.astype(np.float32), atol=1e-3, err_msg=name)
    assert reference["resnet152"].shape == (4, 2048)          # 1 fps: 3.5 s -> 4 (12.5 s -> 13)
    assert reference["resnext101"].shape == (6, 2048)         # ceil(84 / 16) clips
    assert Path(f2).stat().st_size > 200e6 and Path(f3).stat().st_size > 150e6

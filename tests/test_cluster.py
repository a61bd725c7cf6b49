"""dask clusters: joining an existing scheduler by address, and a clear error when it is down."""
from __future__ import annotations

import subprocess

import pyarrow as pa
import pytest
from distributed import LocalCluster

from pipeline.cluster import ClusterError, connect
from pipeline.config import ClusterParams, DownloadParams
from pipeline.download.runner import download
from pipeline.download.ledger import read_availability


def test_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(ClusterError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"):
        with connect(ClusterParams(scheduler_address="tcp://127.0.0.1:9"), timeout_s=1.0):
            pass


def test_download_joins_an_existing_cluster(tmp_path):
    media = tmp_path / "src" / "a.mp4"
    media.parent.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    "-f", "lavfi", "-i", "sine", "-t", "1", "-c:v", "libx264", "-c:a", "aac",
                    "-shortest", str(media)], check=True)
    ids = ["existing-01", "existing-02"]
    videos = pa.table({"video_id": ids, "url": [media.as_uri()] * 2, "split": ["val"] * 2,
                       "duration_s": [1.0, 1.0]})
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster:
        p = ClusterParams(scheduler_address=cluster.scheduler_address)
        s = download("demo", videos, DownloadParams(file_root=str(tmp_path / "src"),
                                                    min_free_gb=0.0), p,
                     tmp_path / "v", tmp_path / "l", tmp_path / "availability.parquet", tmp_path)
        assert s["status"] == {"available": 2}
        # the cluster outlives the run, and the run's named state was cleaned up on it
        with connect(p) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            assert not client.run_on_scheduler(
                lambda dask_scheduler: [k for k in dask_scheduler.extensions["variables"]
                                        .variables if k.startswith("avl-download-")])
    rows = read_availability(tmp_path / "availability.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["available", "available"]


def test_local_workers_run_without_the_profiler_and_can_tune_malloc():
    """Our LocalCluster's workers have dask's 10 ms stack sampler off, and an extraction task
    can undo the nanny's MALLOC_TRIM_THRESHOLD_ (both slowed CPU forwards, features.md)."""
    import os

    import dask

    from pipeline.cluster import tune_allocator

    def inside() -> tuple:
        return (dask.config.get("distributed.worker.profile.enabled"),
                os.environ.get("MALLOC_TRIM_THRESHOLD_"), tune_allocator())

    before = dict(os.environ)
    with connect(ClusterParams(workers=1, threads_per_worker=1)) as client:
        (profile, trim, took), = client.run(inside).values()
    assert profile is False
    # the nanny's OMP_NUM_THREADS=1 etc. do not stay in this process's environment
    assert dict(os.environ) == before
    if trim is not None:        # dask's nanny sets it; whatever it is, mallopt takes over
        assert all(took.values()), took

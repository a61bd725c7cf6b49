"""Unit checks of the download machinery: backoff, yt-dlp options, pacing, journal repair."""
from __future__ import annotations

import random
import time

import pyarrow.parquet as pq

from pipeline.config import DownloadParams
from pipeline.download.fetch import Fetcher, backoff, ydl_options
from pipeline.download.ledger import Journal, attempts_table, read_attempts, read_journal, seal_journal

ROW = {"attempt_id": "a1", "run_id": "r", "video_id": "abcdefghijk", "shard": 0,
       "url": "http://x", "started_at": "2026-01-01T00:00:00+00:00",
       "finished_at": "2026-01-01T00:00:01+00:00", "elapsed_s": 1.0, "status": "pending",
       "reason": "bot_check", "kind": "throttled"}


def test_backoff_is_exponential_capped_and_jittered():
    p = DownloadParams(backoff_s=2.0, max_backoff_s=10.0)
    rng = random.Random(0)
    waits = {k: [backoff(p, k, rng) for _ in range(200)] for k in (1, 2, 3, 4, 5)}
    for k, base in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (5, 10.0)):
        w = waits[k]
        assert all(0.5 * base <= x <= 1.5 * base for x in w)
        assert max(w) - min(w) > 0.5 * base            # jitter spreads the retries
    assert sum(waits[2]) / 200 > 1.7 * sum(waits[1]) / 200


def test_ydl_options_carry_pacing_cookies_proxy_and_rate(tmp_path):
    p = DownloadParams(sleep_interval_s=5, max_sleep_interval_s=15, sleep_requests_s=1.5,
                       ratelimit_bytes_s=1_000_000, cookiefile="/secret/cookies.txt",
                       proxy="socks5://127.0.0.1:1080", socket_timeout_s=12.0, retries=7)
    o = ydl_options(p, tmp_path)
    assert (o["sleep_interval"], o["max_sleep_interval"], o["sleep_interval_requests"]) == \
        (5, 15, 1.5)
    assert o["ratelimit"] == 1_000_000 and o["cookiefile"] == "/secret/cookies.txt"
    assert o["proxy"] == "socks5://127.0.0.1:1080" and o["socket_timeout"] == 12.0
    assert o["retries"] == 7 and o["enable_file_urls"] is False and o["overwrites"] is False
    bare = ydl_options(DownloadParams(), tmp_path)
    assert not {"sleep_interval", "cookiefile", "proxy", "ratelimit"} & set(bare)


def test_fetcher_pacing_spaces_video_starts(tmp_path):
    f = Fetcher(DownloadParams(), tmp_path, tmp_path, pace_s=0.2)
    starts = []
    for _ in range(4):
        f._pace()
        starts.append(time.monotonic())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.19


def test_torn_tail_is_cut_before_a_rerun_appends(tmp_path):
    with Journal(tmp_path, "r", 1) as j:
        j.append(ROW)
    with open(j.path, "a") as f:
        f.write('{"attempt_id": "a2", "vid')          # killed mid-write
    with Journal(tmp_path, "r", 1) as j2:             # the shard task runs again, same run
        j2.append({**ROW, "attempt_id": "a3"})
    assert [r["attempt_id"] for r in read_journal(j.path)] == ["a1", "a3"]
    seal_journal(j.path)
    assert read_attempts(tmp_path).column("attempt_id").to_pylist() == ["a1", "a3"]


def test_sealing_merges_rows_a_rerun_added_after_the_first_seal(tmp_path):
    with Journal(tmp_path, "r", 2) as j:
        j.append(ROW)
    out = seal_journal(j.path)                         # first run of the shard sealed...
    with Journal(tmp_path, "r", 2) as j:               # ...then the task ran again
        j.append(ROW)                                   # a replayed row and a new one
        j.append({**ROW, "attempt_id": "b2", "status": "available", "reason": None})
    seal_journal(j.path)
    assert sorted(pq.read_table(out).column("attempt_id").to_pylist()) == ["a1", "b2"]
    assert read_attempts(tmp_path).num_rows == 2
    assert attempts_table([ROW]).num_rows == 1

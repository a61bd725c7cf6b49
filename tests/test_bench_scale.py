"""The HowTo100M-sized bookkeeping benchmark (issue 16) at 2,000 videos: the generator's inputs are
what the stages would have written, every step reproduces the generated counts, and the
columnar rewrites it led to (current_status, seal_journal, the ledger's path check,
FeatureStore's rows) give what the row-by-row code gave."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import scale
from benchmarks.scale_data import generate, paths
from pipeline.data.manifest import write_parquet_atomic
from pipeline.download import ledger
from pipeline.features.store import INDEX_SCHEMA, FeatureStore

N = 2000


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("scale") / "n"
    truth = generate(root, N, seed=3)
    p = paths(root.resolve())
    shutil.copy(p["features"] / "index.parquet", root.parent / "index-generated.parquet")
    return p, truth


def step(name: str, p: dict, tmp_path: Path) -> dict:
    r = scale.run_step(name, p["root"], tmp_path / name)
    assert r["wall_s"] > 0 and r["peak_mib"] >= r["baseline_mib"] > 0
    assert r["phases"], "the phases of the step were not timed"
    return r["checks"]


def test_truth_is_a_plausible_mix(data):
    _, truth = data
    assert truth["n"] == N and sum(truth["status"].values()) == N
    assert 0.7 < truth["status"]["available"] / N < 0.9
    assert {"private", "removed_by_uploader", "age_restricted", "bot_check",
            "network"} <= set(truth["reasons"])
    assert truth["leftover_journals"] >= 1 and truth["extract_todo"] > 0


def test_listing_is_the_official_format(data):
    p, _ = data
    lines = p["csv"].read_text().splitlines()
    assert lines[0] == "video_id,category_1,category_2,rank,task_id" and len(lines) == N + 1
    ids = [line.split(",")[0] for line in lines[1:]]
    assert len(set(ids)) == N and all(len(v) == 11 for v in ids)


def test_manifest_step_writes_the_generated_manifest(data, tmp_path):
    p, _ = data
    c = step("manifest", p, tmp_path)
    assert c["parsed"] == c["written"] == c["read"] == N and c["clips"] == 0
    out = Path(c["out"])
    for name in ("videos.parquet", "clips.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(p["manifest"] / name)), name
    assert json.loads((out / "manifest.json").read_text()) == \
        json.loads((p["manifest"] / "manifest.json").read_text())


def test_download_plan_matches_the_generated_ledger(data, tmp_path):
    p, truth = data
    c = step("download_plan", p, tmp_path)
    assert c["todo"] == truth["plan"]["todo"]
    assert (c["checked"], c["tried"]) == (truth["plan"]["checked"], truth["plan"]["tried"])
    assert c["status"] == truth["status"] and c["reasons"] == truth["reasons"]
    assert c["journals_left"] == 0                        # the killed run's journals sealed
    # current_status over the whole history rebuilds the generated availability.parquet
    assert pq.read_table(c["availability"]).equals(
        pq.read_table(p["manifest"] / "availability.parquet"))


def test_ledger_seal_step(data, tmp_path):
    p, _ = data
    c = step("ledger_seal", p, tmp_path)
    assert c["rows"] == N and not c["journal_left"]


def test_audit_counts_the_generated_mix(data, tmp_path):
    p, truth = data
    c = step("audit", p, tmp_path)
    assert c["listed"] == N and c["by_status"] == truth["status"]
    assert c["with_audio"] == truth["usable"]
    assert {k: c["by_reason"][k] for k in truth["reasons"]} == truth["reasons"]
    assert c["by_reason"]["no_audio"] == truth["status"]["available"] - truth["usable"]
    assert c["changes"]["newly_gone"] and c["changes"]["came_back"]


def test_extract_plan_finds_the_generated_store(data, tmp_path):
    p, truth = data
    c = step("extract_plan", p, tmp_path)
    assert c["listed"] == N and c["status"] == truth["store"]
    assert c["shards"] == truth["store_shards"] and c["todo"] == truth["extract_todo"] > 0
    # the index it rewrites is the generated one, value for value
    assert pq.read_table(p["features"] / "index.parquet").equals(
        pq.read_table(p["root"].parent / "index-generated.parquet"))


def test_train_list_and_window_table(data, tmp_path):
    p, truth = data
    c = step("train_list", p, tmp_path)
    assert c["videos"] == c["items"] == truth["store"]["ok"]
    assert c["missing"] == N - truth["store"]["ok"]
    assert c["batches"] == truth["store"]["ok"] // c["videos_per_batch"] > 0
    assert c["windows"] == c["batches"] * c["videos_per_batch"] * c["clips_per_video"]


def test_driver_writes_json_and_markdown(tmp_path):
    out = tmp_path / "results"
    assert scale.main(["--sizes", "500,1000", "--only", "ledger_seal", "--out", str(out),
                       "--work", str(tmp_path / "work")]) == 0
    res = json.loads((out / "scale.json").read_text())
    runs = [res["runs"][n]["steps"]["ledger_seal"] for n in ("500", "1000")]
    assert [r["checks"]["rows"] for r in runs] == [500, 1000]
    assert res["analysis"]["ledger_seal"]["growth"][0]["size_ratio"] == 2.0
    md = (out / "scale.md").read_text()
    assert "| ledger_seal |" in md and "## Reading" in md


# --------------------------------------------------------------------------- the rewrites
# references: the row-by-row code they replaced (issue 16)


def reference_current_status(videos: pa.Table, attempts: pa.Table) -> pa.Table:
    latest, count, first = {}, {}, {}
    for a in attempts.to_pylist():
        vid = a["video_id"]
        latest[vid] = a
        count[vid] = count.get(vid, 0) + 1
        first.setdefault(vid, a["started_at"])
    outcome = [f.name for f in ledger._OUTCOME]
    rows = []
    for v in sorted(videos.select(["video_id", "url", "split"]).to_pylist(),
                    key=lambda r: r["video_id"]):
        a, row = latest.get(v["video_id"]), dict(v)
        if a is None:
            row.update({k: None for k in outcome}, status=ledger.PENDING, attempts=0,
                       first_seen=None, last_checked=None)
        else:
            row.update({k: a[k] for k in outcome}, attempts=count[v["video_id"]],
                       first_seen=first[v["video_id"]], last_checked=a["finished_at"])
        rows.append(row)
    return pa.Table.from_pydict({f.name: [r[f.name] for r in rows]
                                 for f in ledger.AVAILABILITY_SCHEMA},
                                schema=ledger.AVAILABILITY_SCHEMA)


def test_current_status_equals_the_row_by_row_one(data):
    p, _ = data
    videos = pq.read_table(p["manifest"] / "videos.parquet")
    attempts = ledger.read_attempts(p["ledger"])
    assert ledger.current_status(videos, attempts).equals(
        reference_current_status(videos, attempts))
    rng = random.Random(0)
    shuffled = attempts.take(pa.array(rng.sample(range(attempts.num_rows), 700)))
    some = pa.concat_tables([videos.slice(0, 300), videos.slice(5, 3)])     # a duplicate too
    some = some.take(pa.array(list(reversed(range(some.num_rows)))))
    for v, a in [(some, shuffled), (videos, ledger.ATTEMPT_SCHEMA.empty_table()),
                 (videos.slice(0, 0), attempts)]:
        assert ledger.current_status(v, a).equals(reference_current_status(v, a))


def reference_inside(root, videos_dir):
    bases = [(Path(root) / d).resolve() for d in ledger.media_dirs(videos_dir)]
    root = Path(os.path.abspath(root))

    def inside(rel):
        if not isinstance(rel, str) or not rel or "\0" in rel:
            return False
        if os.path.isabs(rel) and not any(os.path.isabs(d)
                                          for d in ledger.media_dirs(videos_dir)):
            return False
        parents = Path(os.path.normpath(root / rel)).parents
        return any(b in parents for b in bases)
    return inside


def test_ledger_path_check_equals_the_path_by_path_one():
    parts = ["data", "videos", "ds", "ab", "x.mp4", ".", "..", "", "other", "tmp", "r"]
    rng = random.Random(1)
    rels = {"/".join(rng.choice(parts) for _ in range(rng.randint(1, 6))) for _ in range(6000)}
    rels |= {"/" + r for r in list(rels)[:3000]} | {"//" + r for r in list(rels)[:300]}
    rels |= {"x", "/", "//", ".", "..", "a/", "data/videos/ds/ab/x.mp4", 7, None, "a\0b"}
    for root, videos in [("/r", "data/videos/ds"), ("/r", ["data/videos/ds", "/tmp"]),
                         ("/", "data"), ("/r/x/..", "data/videos"), ("/r", "/")]:
        new, ref = ledger._inside_check(root, videos), reference_inside(root, videos)
        wrong = [r for r in rels if new(r) != ref(r)]
        assert not wrong, (root, videos, wrong[:5])


def _journal(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(ledger.journal_line(r) for r in rows))


@pytest.mark.parametrize("case", ["new", "merge", "all_sealed"])
def test_seal_journal_in_batches_writes_the_same_bytes(data, tmp_path, monkeypatch, case):
    p, _ = data
    rows = ledger.read_journal(p["seal"])[:1300]
    monkeypatch.setattr(ledger, "SEAL_BATCH", 300)       # five batches
    out = {}
    for how in ("batches", "whole"):
        d = tmp_path / how
        d.mkdir()
        j = d / p["seal"].name
        sealed = j.with_suffix(".parquet")
        if case != "new":                                # a first seal of part of it
            write_parquet_atomic(ledger.attempts_table(rows[:700]), sealed)
        _journal(j, rows[400:] if case == "merge" else rows[:200] if case == "all_sealed"
                 else rows)
        if how == "batches":
            assert ledger.seal_journal(j) == sealed and not j.exists()
        else:   # what seal_journal did before: all rows converted at once
            journal = ledger.read_journal(j)
            if sealed.exists():
                have = set(pq.read_table(sealed).column("attempt_id").to_pylist())
                new = [r for r in journal if r["attempt_id"] not in have]
                if new:
                    write_parquet_atomic(pa.concat_tables([
                        pq.read_table(sealed, schema=ledger.ATTEMPT_SCHEMA),
                        ledger.attempts_table(new)]), sealed)
            else:
                write_parquet_atomic(ledger.attempts_table(journal), sealed)
        out[how] = sealed.read_bytes()
    assert out["batches"] == out["whole"]


def test_seal_journal_bad_row_raises_only_when_not_sealed_yet(data, tmp_path, monkeypatch):
    p, _ = data
    rows = ledger.read_journal(p["seal"])[:50]
    monkeypatch.setattr(ledger, "SEAL_BATCH", 20)
    j = tmp_path / p["seal"].name
    bad = [dict(r) for r in rows]
    bad[30]["elapsed_s"] = "slow"
    _journal(j, bad)
    with pytest.raises(ledger.LedgerError, match="wrong type"):
        ledger.seal_journal(j)
    write_parquet_atomic(ledger.attempts_table(rows), j.with_suffix(".parquet"))
    assert ledger.seal_journal(j).is_file() and not j.exists()   # the bad row was sealed


def test_feature_store_rows_equal_the_index(data):
    p, _ = data
    rows = pq.read_table(p["features"] / "index.parquet").to_pylist()
    store = FeatureStore(p["features"], verify="none")
    for r in rows:
        for f in INDEX_SCHEMA:
            r.setdefault(f.name, None)
        info = store.info(r["video_id"])
        assert info == r and list(info) == list(r)
    assert store.ids() == sorted(r["video_id"] for r in rows if r["status"] == "ok")


def test_feature_store_of_an_older_index(data, tmp_path):
    p, _ = data
    cols = ["status", "video_id", "shard", "row", "n_resnet152", "n_resnext101", "n_logmel"]
    old = pq.read_table(p["features"] / "index.parquet").select(cols)
    pq.write_table(old, tmp_path / "index.parquet")
    store = FeatureStore(tmp_path, verify="none")
    for r in old.to_pylist()[:300]:
        for f in INDEX_SCHEMA:             # newer columns read as None, after the old ones
            r.setdefault(f.name, None)
        assert store.info(r["video_id"]) == r and list(store.info(r["video_id"])) == list(r)

"""The search command lines in-process: `avl search` (stages/search.py) and the stages index@
and spoken@ (stages/index.py, stages/spoken.py): exit 0 when it works, 2 with one line for a
user error, 2 for a usage error."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests import test_search
from tests.test_search import N_VIDEOS, _build

project = test_search.project     # the module's fixture: synthetic store, media, models



def _params(d, **search) -> str:
    p = {"datasets": {"demo": "demo"},
         "text": {"word_vectors": str(d / "words.bin"), "cache_dir": str(d / "wcache")}}
    if search:
        p["search"] = search
    path = d / f"params-{len(search)}-{abs(hash(json.dumps(search, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(p))
    return str(path)


def _search(argv, d):
    from stages.search import main
    return main(["--params", _params(d), *map(str, argv)])


def test_search_prints_and_writes_json_and_page(project, capsys, monkeypatch):
    _build(project, "clips")
    monkeypatch.chdir(project)          # the ledger's media paths are relative to the root
    out = project / "out"
    assert _search(["--index", project / "search/clips", "--audio",
                    project / "queries/q.mp3", "--top", 4, "--json", out / "r.json",
                    "--html", out / "r.html"], project) == 0
    printed = capsys.readouterr().out
    assert printed.count("slice the") == 4 and "rank" in printed
    saved = json.loads((out / "r.json").read_text())
    assert [r["rank"] for r in saved["results"]] == [1, 2, 3, 4]
    assert saved["query"]["notes"] == ["resampled from 44100 Hz, 2 channel(s) to 16000 Hz mono"]
    page = (out / "r.html").read_text()
    assert page.count("<img") == 5 and page.count("<audio") == 5
    assert _search(["--index", project / "search/clips", "--clip", "synthvid002_1"],
                   project) == 0


def test_text_search_on_a_text_index(project, capsys):
    _build(project, "clips-avlnet_text_tri", "avlnet_text_tri.pt")
    assert _search(["--index", project / "search/clips-avlnet_text_tri", "--text",
                    "slice the carrot", "--top", 3], project) == 0
    assert capsys.readouterr().out.count("synthvid") == 2 * 3   # video_id and clip_id


@pytest.mark.parametrize("args, message", [
    (["--audio", "queries/silent.wav"], "all silence"),
    (["--audio", "queries/zero.wav"], "length zero"),
    (["--text", "slice the lime"], "an audio-video index"),
    (["--clip", "nope"], "no clip 'nope'"),
    (["--audio", "queries/q.wav", "--checkpoint", "models/av-other.pt"],
     "index built with another checkpoint"),
    (["--audio", "queries/q.wav", "--checkpoint", "models/mmv_fac.pt"],
     "a mmv_fac model"),
])
def test_search_user_errors_exit_2_with_one_line(project, caplog, args, message):
    _build(project, "clips")
    args = [project / a if a.startswith(("queries/", "models/")) else a for a in args]
    assert _search(["--index", project / "search/clips", *args], project) == 2
    failed = [r.getMessage() for r in caplog.records if "search failed" in r.getMessage()]
    assert len(failed) == 1 and message in failed[0] and "\n" not in failed[0]


def test_search_usage_and_missing_index(project, tmp_path, caplog):
    assert _search(["--index", project / "search/clips"], project) == 2
    assert _search(["--index", project / "search/clips", "--audio", "x.wav", "--text", "a"],
                   project) == 2
    assert _search(["--index", tmp_path / "demo", "--audio", "x.wav"], project) == 2
    assert "build it with `avl index --dataset demo` (stage index@demo" in caplog.text


def test_index_stage_builds_and_spoken_stage_reports(project, tmp_path):
    from stages.index import main as index_main
    from stages.spoken import main as spoken_main
    d = project
    common = ["--dataset", "demo", "--features", d / "features", "--manifest", d / "manifest",
              "--models", d / "models"]
    params = _params(d, setting=str(d / "models/av.pt"), units="windows", window_s=6.0,
                     hop_s=3.0, verify="size", device="cpu")
    out = tmp_path / "search" / "demo"
    assert index_main(["--params", params, *map(str, common), "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["units"] == "windows" and record["videos_without_features"] == 1
    assert record["n_items"] == N_VIDEOS * 4                  # 0-6, 3-9, 6-12, 8-14 s
    bad = _params(d, setting=str(d / "models/none.pt"))
    assert index_main(["--params", bad, *map(str, common), "--out", str(out)]) == 2
    assert (out / "record.json").is_file()                    # the index in place is kept
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    reports = tmp_path / "reports"
    spoken = _params(d, words=["cheese"], top=3, device="cpu")
    assert spoken_main(["--dataset", "demo", "--params", spoken, "--index", str(out),
                        "--out", str(reports)]) == 0
    s = json.loads((reports / "demo.json").read_text())
    assert s["n_words"] == 1 and list(s["words"]) == ["cheese"]
    assert (reports / "demo.md").is_file() and (reports / "demo.html").is_file()

"""The AVLnet-Text stages end to end on a small synthetic project (issue 13, items 5 and bad
input): captions@ -> train_text -> finetune_text@ -> evaluate_text@, each run as dvc.yaml runs
it (main(argv)); every direction reported under both protocols; the low-resource setting from
an audio-video checkpoint; bad caption files, word vectors of the wrong kind and captions past
a video's end are a one-line error (exit 2) or a counted skip."""
from __future__ import annotations

import json
import logging

import pytest
import yaml

from benchmarks.synthetic_store import make_project, video_id
from pipeline.evaluate.text import TEXT_DIRECTIONS
from pipeline.text.words import WORD_DIM, demo_vectors, write_word2vec

TINY = {"embed_dim": 32, "audio_widths": [8, 16, 16, 32], "video_norm": "batchnorm"}
WORDS = ["carrot", "lime", "bread", "slice", "the", "now", "okay", "chop"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """make_project's store and manifest (24 videos of 30 s, 2 clips each) plus a caption.json
    (a caption every 3 s, one running past the video's end, one starting after it) and a
    seeded word2vec file; params with a tiny Tri for train_text and finetune_text."""
    root = tmp_path_factory.mktemp("textproj")
    params_file = make_project(root, TINY, "cpu", videos=24, seconds=30, workers=0)
    caps = {}
    for i in range(24):
        starts = [1.0 + 3 * k for k in range(9)]
        caps[video_id(i)] = {"start": starts + [29.0, 31.0],
                             "end": [s + 2.5 for s in starts] + [32.0, 33.0],
                             "text": [f"now {WORDS[(i + k) % 3]} okay" for k in range(9)]
                             + ["chop the lime", "gone"]}
    (root / "caption.json").write_text(json.dumps(caps))
    write_word2vec(root / "words.bin", WORDS, demo_vectors(WORDS, WORD_DIM, 0))
    p = yaml.safe_load(params_file.read_text())
    p["text"] = {"word_vectors": str(root / "words.bin"), "cache_dir": str(root / "cache"),
                 "captions": ["demo"],
                 "train": {"dataset": "demo", "model": {"arch": "avlnet_text_tri", **TINY},
                           "epochs": 1, "videos_per_batch": 8, "clips_per_video": 2,
                           "workers": 0, "device": "cpu", "caption_min_s": 4.0,
                           "caption_frames": 400, "threads": 1},
                 "finetune": {"datasets": ["demo"], "batch": 8, "epochs": 1},
                 "evaluate": {"datasets": ["demo"], "examples": 2, "device": "cpu"}}
    params_file.write_text(yaml.safe_dump(p))
    return root


def run_stage(root, name, *args):
    import importlib
    mod = importlib.import_module(f"stages.{name}")
    return mod.main(["--params", str(root / "params.yaml"), *args])


def test_captions_train_finetune_evaluate(project, caplog):
    root = project
    caplog.set_level(logging.INFO)
    assert run_stage(root, "captions", "--dataset", "demo", "--source",
                     str(root / "caption.json"), "--manifest", str(root / "manifest"),
                     "--out", str(root / "captions")) == 0
    report = json.loads((root / "captions" / "report.json").read_text())
    # 24 videos x 11 captions: the one starting after the 30 s end is a counted skip, the one
    # running past it is kept with its end clipped, counted too
    assert report["counts"]["captions"] == 24 * 10
    assert report["skipped"]["outside_duration"] == 24
    assert report["counts"]["end_clipped"] == 24
    assert run_stage(root, "train_text", "--features", str(root / "features"), "--manifest",
                     str(root / "manifest"), "--captions", str(root / "captions"),
                     "--out", str(root / "pre")) == 0
    pre = root / "pre" / "final.pt"
    log_rows = [json.loads(x) for x in (root / "pre" / "log.jsonl").read_text().splitlines()]
    assert {"loss_audio_video", "loss_audio_text", "loss_text_video"} <= set(log_rows[0])
    assert run_stage(root, "finetune_text", "--dataset", "demo", "--features",
                     str(root / "features"), "--manifest", str(root / "manifest"),
                     "--init", str(pre), "--out", str(root / "ft")) == 0
    summary = json.loads((root / "ft" / "summary.json").read_text())
    assert summary["provenance"]["init_kind"] == "pretrained"
    assert summary["provenance"]["clips_without_text"] == 0
    models = root / "models"
    (models / "pretrain").mkdir(parents=True)
    (models / "finetune-demo").mkdir(parents=True)
    for src, dst in ((root / "pre", models / "pretrain"),
                     (root / "ft", models / "finetune-demo")):
        for f in ("final.pt", "checksums.json"):
            (dst / f).write_bytes((src / f).read_bytes())
    out = root / "reports"
    assert run_stage(root, "evaluate_text", "--dataset", "demo", "--features",
                     str(root / "features"), "--manifest", str(root / "manifest"),
                     "--models", str(models), "--out", str(out)) == 0
    flat = json.loads((out / "demo.json").read_text())
    for setting in ("zero_shot", "fine_tuned"):
        for d in TEXT_DIRECTIONS:                 # Tri: all eight, paper protocol headline
            assert 0.0 <= flat[f"{setting}/paper/{d}_R@10"] <= 1.0
    details = json.loads((out / "demo" / "details.json").read_text())
    assert details["settings"]["fine_tuned"]["metrics"]["available"]["n_queries"] == 16
    md = (out / "demo.md").read_text()
    assert "T+A->V" in md and "random (chance, 16 clips)" in md
    page = (out / "demo.html").read_text()
    assert "text query" in page and "synthetic" in page         # the query caption is shown
    # both directions: 2 settings x 2 queries x (T->V, V->T)
    assert page.count("query</b>") == 8 and page.count("V->T, video query") == 2
    csv = (out / "curves" / "demo" / "fine_tuned.csv").read_text().splitlines()
    # K = 1..16: the curve stops at the official clip count
    assert csv[0].split(",")[0] == "K" and "text_to_video" in csv[0] and len(csv) == 1 + 16
    assert "median over the present clips only" in md


def test_low_resource_setting_from_an_audio_video_checkpoint(project):
    root = project
    assert run_stage(root, "train", "--features", str(root / "features"), "--manifest",
                     str(root / "manifest"), "--out", str(root / "av")) == 0
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["text"]["train"]["model"]["arch"] = "avlnet_text_fused"
    p["text"]["finetune"]["init"] = "audio_video"
    (root / "fused.yaml").write_text(yaml.safe_dump(p))
    from stages.finetune_text import main
    argv = ["--params", str(root / "fused.yaml"), "--dataset", "demo", "--features",
            str(root / "features"), "--manifest", str(root / "manifest"), "--init",
            str(root / "pre" / "final.pt"), "--init-av", str(root / "av" / "final.pt")]
    assert main([*argv, "--out", str(root / "lowres")]) == 0
    prov = json.loads((root / "lowres" / "summary.json").read_text())["provenance"]
    assert prov["init_kind"] == "audio_video"
    fresh = {k.split(".")[0] for k in prov["init_partial"]["fresh"]}
    assert fresh == {"DAVEnet_projection", "text_pooling_caption", "GU_audio_text"}
    assert prov["init"] == str(root / "av" / "final.pt")     # --init-av, not train_text's model
    # a text model given where the audio-video AVLnet belongs: one line, nothing trained
    bad = argv[:-1] + [str(root / "pre" / "final.pt")]
    assert main([*bad, "--out", str(root / "lowres-bad")]) == 2
    assert not (root / "lowres-bad" / "final.pt").exists()


def test_bad_inputs_are_one_line_errors(project, tmp_path, caplog):
    root = project
    caplog.set_level(logging.ERROR)
    cut = tmp_path / "cut.json"
    cut.write_bytes((root / "caption.json").read_bytes()[:5000])
    assert run_stage(root, "captions", "--dataset", "demo", "--source", str(cut),
                     "--manifest", str(root / "manifest"), "--out", str(tmp_path / "c")) == 2
    assert "truncated or malformed" in caplog.text and str(cut) in caplog.text
    assert not (tmp_path / "c").exists()
    caplog.clear()
    p = yaml.safe_load((root / "params.yaml").read_text())
    write_word2vec(tmp_path / "w50.bin", WORDS, demo_vectors(WORDS, 50, 0))
    p["text"]["word_vectors"] = str(tmp_path / "w50.bin")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    from stages.train_text import main
    argv = ["--params", str(tmp_path / "p.yaml"), "--features", str(root / "features"),
            "--manifest", str(root / "manifest"), "--captions", str(root / "captions"),
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "50" in caplog.text and "300" in caplog.text and "w50.bin" in caplog.text
    caplog.clear()
    p["text"]["word_vectors"] = str(tmp_path / "missing.bin")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    assert main(argv) == 2
    assert "GoogleNews" in caplog.text and "missing.bin" in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_the_audio_video_evaluation_refuses_a_text_model_and_says_where_it_goes(project, caplog):
    root = project
    if not (root / "pre" / "final.pt").is_file():
        pytest.skip("needs test_captions_train_finetune_evaluate's model")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["evaluate"]["checkpoints"] = {"tri": str(root / "pre" / "final.pt")}
    p["evaluate"]["settings"] = []
    (root / "ev.yaml").write_text(yaml.safe_dump(p))
    from stages.evaluate import main
    caplog.set_level(logging.ERROR)
    assert main(["--params", str(root / "ev.yaml"), "--dataset", "demo", "--features",
                 str(root / "features"), "--manifest", str(root / "manifest"), "--out",
                 str(root / "avrep")]) == 2
    assert "avlnet_text_tri" in caplog.text and "evaluate_text" in caplog.text


def test_mmv_heads_train_and_report_every_direction(project):
    """MMV's fine-and-coarse heads through the same stages: pretrained on caption clips with
    NCE + MIL-NCE, then evaluated as a named checkpoint (text.evaluate.checkpoints)."""
    root = project
    if not (root / "captions" / "report.json").is_file():
        pytest.skip("needs test_captions_train_finetune_evaluate's caption store")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["text"]["train"]["model"] = {"arch": "mmv_fac", **TINY, "mmv_va_dim": 16,
                                   "mmv_vat_dim": 8}
    p["text"]["evaluate"].update(settings=[], checkpoints={"mmv": str(root / "mmv" / "final.pt")})
    (root / "mmv.yaml").write_text(yaml.safe_dump(p))
    from stages.evaluate_text import main as evaluate
    from stages.train_text import main as train
    assert train(["--params", str(root / "mmv.yaml"), "--features", str(root / "features"),
                  "--manifest", str(root / "manifest"), "--captions", str(root / "captions"),
                  "--out", str(root / "mmv")]) == 0
    rows = [json.loads(x) for x in (root / "mmv" / "log.jsonl").read_text().splitlines()]
    assert {"loss_video_audio_nce", "loss_video_text_milnce"} <= set(rows[0])
    assert evaluate(["--params", str(root / "mmv.yaml"), "--dataset", "demo", "--features",
                     str(root / "features"), "--manifest", str(root / "manifest"), "--out",
                     str(root / "mmvrep")]) == 0
    flat = json.loads((root / "mmvrep" / "demo.json").read_text())
    assert {k.split("/")[-1].rsplit("_R@", 1)[0] for k in flat if "_R@" in k} \
        == set(TEXT_DIRECTIONS)

"""Images with spoken captions (extensions.md §4): manifests, hostile paths, decoding statuses,
the demo image set, one fine-tuning step per encoder mode, recall."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.config import ParamsError, from_dict
from pipeline.data.manifest import ManifestError
from pipeline.features.logmel import logmel
from pipeline.images import finetune as ft
from pipeline.images.load import (LoadError, decode_pairs, load_caption, load_image,
                                  open_cache)
from pipeline.images.manifest import read_pair_list, read_pairs, read_places_json, write_pairs
from pipeline.config import ImagesDemoParams, ImagesParams
from pipeline.safety import UnsafeInputError

torch.set_num_threads(1)


def _wav(path: Path, x: np.ndarray, rate: int = 16000) -> Path:
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x                 # (N, channels)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)


def _jpg(path: Path, seed: int = 0, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _places(tmp: Path, items: list[dict], name: str = "train.json") -> Path:
    (tmp / "imgs").mkdir(exist_ok=True)
    (tmp / "wavs").mkdir(exist_ok=True)
    path = tmp / name
    path.write_text(json.dumps({"image_base_path": "imgs", "audio_base_path": "wavs",
                                "data": items}))
    return path


# --------------------------------------------------------------------------- manifests


def test_places_json_pairs_and_missing_files_recorded(tmp_path):
    path = _places(tmp_path, [
        {"uttid": "u1", "image": "a/x.jpg", "wav": "u1.wav", "speaker": "S1",
         "asr_text": "a red thing"},
        {"uttid": "u2", "image": "gone.jpg", "wav": "u2.wav"},
        {"image": "a/x.jpg", "wav": "nowav.wav"}])
    (tmp_path / "imgs" / "a").mkdir()
    _jpg(tmp_path / "imgs" / "a" / "x.jpg")
    _wav(tmp_path / "wavs" / "u1.wav", _tone(16000))
    _wav(tmp_path / "wavs" / "u2.wav", _tone(16000))
    rows = read_places_json(path, "train")
    assert [r["pair_id"] for r in rows] == ["u1", "u2", "train-0000002"]
    assert [r["status"] for r in rows] == ["ok", "missing_image", "missing_audio"]
    assert rows[0]["image"] == str(tmp_path / "imgs" / "a" / "x.jpg")
    assert rows[0]["speaker"] == "S1" and rows[0]["text"] == "a red thing"
    assert "gone.jpg" in rows[1]["error"] and "nowav.wav" in rows[2]["error"]
    counts = write_pairs(rows, tmp_path / "pairs.parquet")
    assert counts == {"train": {"ok": 1, "missing_image": 1, "missing_audio": 1}}
    table = pq.read_table(tmp_path / "pairs.parquet")
    assert table.num_rows == 3 and table.column("status").to_pylist()[1] == "missing_image"


def test_csv_list_with_and_without_split(tmp_path):
    _jpg(tmp_path / "i.jpg")
    _wav(tmp_path / "a.wav", _tone(16000))
    (tmp_path / "list.csv").write_text("image,audio,split\ni.jpg,a.wav,val\ni.jpg,b.wav,\n")
    rows = read_pair_list(tmp_path / "list.csv", "train")
    assert [(r["split"], r["status"]) for r in rows] == [("val", "ok"), ("train",
                                                                          "missing_audio")]
    (tmp_path / "bad.csv").write_text("img,audio\ni.jpg,a.wav\n")
    with pytest.raises(ManifestError, match="image"):
        read_pair_list(tmp_path / "bad.csv")


@pytest.mark.parametrize("field,value", [("image", "/etc/passwd"), ("wav", "../../secret.wav"),
                                         ("image", "a/../../imgs2/x.jpg")])
def test_hostile_places_paths_refused_naming_the_item(tmp_path, field, value):
    item = {"uttid": "u2", "image": "x.jpg", "wav": "x.wav"} | {field: value}
    path = _places(tmp_path, [{"uttid": "u1", "image": "x.jpg", "wav": "x.wav"}, item])
    with pytest.raises(UnsafeInputError, match=r"data\[1\].*" + field):
        read_places_json(path, "train")


def test_hostile_csv_path_and_id_refused(tmp_path):
    (tmp_path / "l.csv").write_text("image,audio\nok.jpg,ok.wav\n../up.jpg,ok.wav\n")
    with pytest.raises(UnsafeInputError, match="row 3"):
        read_pair_list(tmp_path / "l.csv")
    path = _places(tmp_path, [{"uttid": "../evil", "image": "x.jpg", "wav": "x.wav"}])
    with pytest.raises(UnsafeInputError, match="uttid"):
        read_places_json(path, "train")


def test_duplicate_ids_across_files_refused(tmp_path):
    a = _places(tmp_path, [{"uttid": "u1", "image": "x.jpg", "wav": "x.wav"}], "a.json")
    b = _places(tmp_path, [{"uttid": "u1", "image": "y.jpg", "wav": "y.wav"}], "b.json")
    with pytest.raises(ManifestError, match="u1"):
        read_pairs([(a, "train"), (b, "val")])


# --------------------------------------------------------------------------- decoding


def test_image_preprocessing_and_bad_images(tmp_path):
    x = load_image(_jpg(tmp_path / "w.jpg", size=(80, 40)), 36, 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.uint8
    (tmp_path / "text.jpg").write_text("not an image at all")
    data = (tmp_path / "w.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    for name in ("text.jpg", "cut.jpg"):
        with pytest.raises(LoadError, match=name) as e:
            load_image(tmp_path / name, 36, 32)
        assert e.value.status == "bad_image"


def test_captions_resampled_downmixed_and_empty(tmp_path):
    ref = logmel(_tone(16000).astype(np.float32))
    mono = load_caption(_wav(tmp_path / "m.wav", _tone(16000)))
    assert torch.allclose(mono, ref, atol=0.05)          # 16-bit quantisation only
    x44 = _tone(44100)
    stereo = load_caption(_wav(tmp_path / "s.wav", np.stack([x44, x44], 1), 44100))
    assert stereo.shape == ref.shape
    assert (stereo - ref).abs().mean() < 1.0              # dB, resampled from 44.1 kHz
    left_only = load_caption(_wav(tmp_path / "l.wav", np.stack([x44, 0 * x44], 1), 44100))
    assert (left_only - stereo).abs().mean() < 1.0        # averaged: same shape, 6 dB lower
    with pytest.raises(LoadError, match="e.wav") as e:
        load_caption(_wav(tmp_path / "e.wav", np.zeros(0)))
    assert e.value.status == "empty_audio"
    (tmp_path / "n.wav").write_bytes(b"RIFF\x00\x00\x00\x00junk")
    with pytest.raises(LoadError) as e:
        load_caption(tmp_path / "n.wav")
    assert e.value.status == "bad_audio"


def test_decode_pairs_records_statuses(tmp_path):
    items = [{"uttid": f"u{i}", "image": f"{i}.jpg", "wav": f"{i}.wav"} for i in range(4)]
    path = _places(tmp_path, items)
    for i in range(4):
        _jpg(tmp_path / "imgs" / f"{i}.jpg", i)
        _wav(tmp_path / "wavs" / f"{i}.wav", _tone(16000))
    (tmp_path / "imgs" / "1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    _wav(tmp_path / "wavs" / "2.wav", np.zeros(0))
    (tmp_path / "wavs" / "3.wav").unlink()
    rows = read_places_json(path, "train")
    out = decode_pairs(rows, tmp_path / "cache", 36, 32, 64)
    assert [r["status"] for r in rows] == ["ok", "bad_image", "empty_audio", "missing_audio"]
    assert out["ids"] == ["u0"] and "1.jpg" in rows[1]["error"]
    c = open_cache(tmp_path / "cache")
    assert c["images"].shape == (1, 3, 32, 32) and c["spec"].shape == (1, 40, 64)
    assert c["nframes"].tolist() == [101]


# --------------------------------------------------------------------------- demo set


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_demo_images_deterministic(tmp_path):
    from pipeline.images.demo import generate
    p = ImagesDemoParams(n_concepts=2, train_per_concept=1, val_per_concept=1, width=64,
                         height=48, seed=3)

    def digest(folder: Path) -> dict[str, str]:
        return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(folder.rglob("*")) if f.is_file()}

    a = digest(generate(p, tmp_path / "a")["train"].parent)
    b = digest(generate(p, tmp_path / "b")["train"].parent)
    c = digest(generate(dataclasses.replace(p, seed=4), tmp_path / "c")["train"].parent)
    assert a == b and len(a) == 2 + 4 + 4            # 2 JSON, 4 jpg, 4 wav
    assert {k for k in a if k.endswith(".jpg") and a[k] != c[k]}
    rows = read_pairs([(tmp_path / "a" / "train.json", "train"),
                       (tmp_path / "a" / "val.json", "val")])
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert decode_pairs(rows, tmp_path / "cache", 40, 32, 256)["counts"] == {"ok": 4}


# --------------------------------------------------------------------------- fine-tuning


TINY = ImagesParams(image_size=32, resize=32, audio_frames=64, weights="random:0",
                    embed_dim=8, audio_widths=[4, 4, 4, 8], video_norm="batchnorm", batch=4,
                    epochs=1, lr=1e-2, encoder_lr=1e-2, device="cpu", init="none")


@pytest.fixture(scope="module")
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8).numpy()
    spec = -80 * torch.rand(4, 40, 64, generator=g)
    return images, spec, torch.tensor([64, 50, 40, 30])


@pytest.mark.parametrize("mode,bn", [("frozen", "train"), ("layer4", "train"),
                                     ("layer4", "frozen"), ("all", "train")])
def test_one_step_trains_the_encoder_only_when_asked(mode, bn, tiny_batch):
    images, spec, nframes = tiny_batch
    model, _ = ft.build(dataclasses.replace(TINY, encoder_bn=bn), encoder=mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cached = ft.prefix_outputs(model, images, torch.device("cpu"))
    assert (cached is None) == (mode == "all")
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    loss = ft.train_step(model, opt, ft.MMS(0.001), torch.arange(4), images, cached, spec,
                         nframes, torch.device("cpu"))
    assert np.isfinite(loss)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "avlnet.GU_video.fc.weight" in changed and "avlnet.DAVEnet_projection.weight" in changed
    enc = {k for k in changed if k.startswith("encoder.")}
    if mode == "frozen":
        assert not enc
    elif mode == "layer4":
        assert enc and all(k.startswith("encoder.net.layer4.") for k in enc)
        # BatchNorm statistics: updated by batch-statistics training, kept when frozen
        assert any("running_" in k for k in enc) == (bn == "train")
    else:
        assert "encoder.net.conv1.weight" in enc and "encoder.net.layer4.2.conv3.weight" in enc


def test_recall_matches_brute_force_and_chance():
    g = torch.Generator().manual_seed(1)
    a, v = torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g)
    m = ft.recall(a, v)
    s = a @ v.T
    for name, sim in (("audio_to_image", s), ("image_to_audio", s.T)):
        ranks = [(sim[i] >= sim[i, i]).sum().item() - 1 for i in range(30)]
        for k in (1, 5, 10):
            assert m[f"{name}_R@{k}"] == pytest.approx(np.mean([r < k for r in ranks]))
    assert m["chance_R@5"] == pytest.approx(5 / 30)
    exact = ft.recall(torch.eye(5), torch.eye(5))
    assert exact["audio_to_image_R@1"] == 1.0 and exact["image_to_audio_R@1"] == 1.0


def test_params_fail_fast():
    with pytest.raises(ParamsError, match="encoder"):
        from_dict(ImagesParams, {"encoder": "half"})
    with pytest.raises(ParamsError, match="encoder"):
        from_dict(ImagesParams, {"encoder": "frozen"})     # the baseline: frozen_baseline
    with pytest.raises(ParamsError, match="sets"):
        from_dict(ImagesParams, {"sets": ["places"]})
    with pytest.raises(ParamsError, match="resize"):
        from_dict(ImagesParams, {"image_size": 224, "resize": 200})


def test_stage_end_to_end_and_failure_threshold(tmp_path):
    from stages.images import main
    items = [{"uttid": f"t{i}", "image": f"t{i}.jpg", "wav": f"t{i}.wav"} for i in range(4)]
    train = _places(tmp_path, items)
    for i in range(4):
        _jpg(tmp_path / "imgs" / f"t{i}.jpg", i)
        _wav(tmp_path / "wavs" / f"t{i}.wav", _tone(16000, 0.5 + 0.1 * i))
    (tmp_path / "imgs" / "t3.jpg").write_text("broken")
    for i in range(2):
        _jpg(tmp_path / f"v{i}.jpg", 10 + i)
        _wav(tmp_path / f"v{i}.wav", _tone(16000, 0.7))
    (tmp_path / "val.csv").write_text("image,audio\nv0.jpg,v0.wav\nv1.jpg,v1.wav\n")
    tiny = {k: v for k, v in dataclasses.asdict(TINY).items() if k != "demo"}
    params = tmp_path / "params.yaml"
    args = ["--params", str(params), "--source", f"train={train}", "--source",
            f"val={tmp_path / 'val.csv'}", "--out", str(tmp_path / "out"), "--report",
            str(tmp_path / "r" / "mine")]
    params.write_text(json.dumps({"images": tiny | {"encoder": "layer4",
                                                    "max_failure_fraction": 0.1}}))
    assert main(args) == 2                            # 1 of 6 unusable > 10 %
    status = pq.read_table(tmp_path / "out" / "pairs.parquet").column("status").to_pylist()
    assert status.count("bad_image") == 1 and not (tmp_path / "r").exists()
    params.write_text(json.dumps({"images": tiny | {"encoder": "layer4",
                                                    "max_failure_fraction": 0.5}}))
    assert main(args) == 0
    m = json.loads((tmp_path / "r" / "mine.json").read_text())
    assert m["statuses"] == {"train": {"ok": 3, "bad_image": 1}, "val": {"ok": 2}}
    assert set(m["after"]) == {"frozen", "layer4"} and m["steps"] == {"frozen": 1, "layer4": 1}
    assert 0 <= m["after"]["layer4"]["audio_to_image_R@1"] <= 1
    assert m["chance"]["R@1"] == pytest.approx(0.5) and len(m["verdict"]) == 2
    md = (tmp_path / "r" / "mine.md").read_text()
    assert "fine-tuned, frozen encoder" in md and "encoder trained (layer4)" in md
    assert "paper Table 2, AVLnet" in md and "bad_image 1" in md
    assert "Label recall" not in md and "label_R@1" not in m["chance"]      # no labels given
    for mode in ("frozen", "layer4"):
        assert (tmp_path / "out" / mode / "model.pt").is_file()


def test_bf16_autocast_step_runs(tiny_batch):
    """The GPU path's autocast (bf16), exercised on the CPU."""
    images, spec, nframes = tiny_batch
    model, _ = ft.build(dataclasses.replace(TINY, precision="bf16"), encoder="layer4")
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    w = model.encoder.net.layer4[0].conv1.weight.clone()
    loss = ft.train_step(model, opt, ft.MMS(0.001), torch.arange(4), images, None, spec,
                         nframes, torch.device("cpu"), torch.bfloat16)
    assert np.isfinite(loss) and not torch.equal(w, model.encoder.net.layer4[0].conv1.weight)


def _tiny_pairs(tmp: Path, n_train: int = 4, n_val: int = 2) -> list[tuple[Path, str]]:
    (tmp / "imgs").mkdir(exist_ok=True)
    (tmp / "wavs").mkdir(exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        items = [{"uttid": f"{split}{i}", "image": f"{split}{i}.jpg", "wav": f"{split}{i}.wav",
                  "label": "ab"[i % 2]} for i in range(n)]
        for i in range(n):
            _jpg(tmp / "imgs" / f"{split}{i}.jpg", 100 * (split == "val") + i)
            _wav(tmp / "wavs" / f"{split}{i}.wav", _tone(16000, 0.4 + 0.1 * i))
        out.append((_places(tmp, items, f"{split}.json"), split))
    return out


def test_init_pretrain_2d_pretrains_a_2d_only_model_first(tmp_path):
    """images.init pretrain-2d: the stage pretrains a 2D-only AVLnet on train.dataset with the
    train section's recipe (whatever its model.visual) and both fine-tunes start from it."""
    from pipeline.images.run import ImagesError, run_images
    from pipeline.learn.train import _check_visual, load_checkpoint
    from tests.test_evaluate import build_project
    from tests.test_visual import tp
    d = build_project(tmp_path / "project")
    pairs = _tiny_pairs(tmp_path)
    p = dataclasses.replace(TINY, init="pretrain-2d", encoder="layer4")
    with pytest.raises(ImagesError, match="--features"):
        run_images(pairs, tmp_path / "out0", p)
    for i in range(2):                                   # no usable val pair: stop at once
        (tmp_path / "imgs" / f"val{i}.jpg").write_text("broken")
    with pytest.raises(ImagesError, match="0 usable val"):
        run_images(pairs, tmp_path / "out1", dataclasses.replace(p, max_failure_fraction=1.0),
                   None, tp("2d3d"), (d / "features", d / "manifest"))
    assert not (tmp_path / "out1" / "pretrain-2d").exists()
    pairs = _tiny_pairs(tmp_path)
    with pytest.raises(ImagesError, match="no such checkpoint"):
        run_images(pairs, tmp_path / "out0", dataclasses.replace(p, init=str(tmp_path / "x.pt")))
    r = run_images(pairs, tmp_path / "out", p, tmp_path / "reports" / "tiny", tp("2d3d"),
                   (d / "features", d / "manifest"))
    final = tmp_path / "out" / "pretrain-2d" / "final.pt"
    state, _ = load_checkpoint(final, known=None)
    _check_visual(state, final, "2d")                       # raises unless 2D-only
    assert r["init_checkpoint"] == str(final) and set(r["after"]) == {"frozen", "layer4"}
    saved = torch.load(tmp_path / "out" / "layer4" / "model.pt", weights_only=False)
    assert saved["params"]["init"] == str(final)
    # before fine-tuning, both runs embed with the same pretrained model: one "before" row
    before = [json.loads((tmp_path / "out" / m / "metrics.json").read_text())["before"]
              for m in ("frozen", "layer4")]
    assert before[0] == before[1] == r["before"]
    # every val pair is labelled: the label recall, with its exact chance (1 of 2 alike)
    assert r["chance"]["label_R@1"] == pytest.approx(0.5) and len(r["verdict"]) == 4
    assert "### Label recall" in (tmp_path / "reports" / "tiny.md").read_text()


def test_label_recall_and_its_chance():
    """label_recall counts a hit for any item of the query's label in the top K;
    label_chance is its expectation under a random ranking (checked by shuffling)."""
    labels = np.array(["a", "a", "b", "b", "b", "c"])
    q = torch.eye(6)
    items = torch.eye(6)[[1, 0, 2, 3, 4, 5]]           # query 0 finds item 0 = pair 1's image
    r = ft.label_recall(q, items, labels, ks=(1, 2))
    assert r[1] == pytest.approx(1.0)                   # every top 1 has the query's label
    # a collapsed model (every score equal) gets no hit: ties rank pessimistically
    # (at K = 4 only the b queries hit: their 3 other-label items fit in front of them)
    assert ft.label_recall(torch.ones(6, 3), torch.ones(6, 3), labels, ks=(1, 4)) == \
        {1: 0.0, 4: pytest.approx(0.5)}
    items = torch.eye(6)[[2, 5, 0, 1, 3, 4]]            # query i's top 1: item j, order[j] = i
    top1 = np.argsort([2, 5, 0, 1, 3, 4])               # = [2, 3, 0, 4, 5, 1]
    assert ft.label_recall(q, items, labels, ks=(1,))[1] == pytest.approx(
        np.mean(labels[top1] == labels)) == pytest.approx(1 / 6)
    rng = np.random.default_rng(0)
    sims = [ft.label_recall(torch.from_numpy(rng.standard_normal((6, 4))).float(),
                            torch.from_numpy(rng.standard_normal((6, 4))).float(), labels,
                            ks=(1, 3)) for _ in range(3000)]
    chance = ft.label_chance(labels, ks=(1, 3))
    for k in (1, 3):
        assert np.mean([s[k] for s in sims]) == pytest.approx(chance[k], abs=0.015)
    assert chance[1] == pytest.approx((2 / 6 * 2 + 3 / 6 * 3 + 1 / 6) / 6)
    m = ft.recall(torch.eye(6), torch.eye(6), labels)
    assert m["audio_to_image_label_R@1"] == 1.0 and "chance_label_R@10" in m


def test_labels_read_from_json_and_csv(tmp_path):
    items = [{"uttid": "p0", "image": "p0.jpg", "wav": "p0.wav", "label": "egg"},
             {"uttid": "p1", "image": "p1.jpg", "wav": "p1.wav"}]
    rows = read_places_json(_places(tmp_path, items), "train")
    assert [r["label"] for r in rows] == ["egg", None]
    (tmp_path / "l.csv").write_text("image,audio,label\na.jpg,a.wav,lime\nb.jpg,b.wav,\n")
    assert [r["label"] for r in read_pair_list(tmp_path / "l.csv")] == ["lime", None]
    write_pairs(rows, tmp_path / "pairs.parquet")
    assert pq.read_table(tmp_path / "pairs.parquet").column("label").to_pylist() == ["egg", None]


def test_cache_keeps_ids_with_spaces_and_drops_failed_rows(tmp_path):
    """A CSV named with a space gives ids with a space; the cache holds only the usable pairs,
    in order, and reads back as memmaps."""
    for i in range(3):
        _jpg(tmp_path / f"i{i}.jpg", i)
        _wav(tmp_path / f"a{i}.wav", _tone(16000, 0.5))
    (tmp_path / "a1.wav").write_bytes(b"")                 # not a wav: bad_audio
    (tmp_path / "my pairs.csv").write_text("image,audio\n" + "".join(
        f"i{i}.jpg,a{i}.wav\n" for i in range(3)))
    rows = read_pair_list(tmp_path / "my pairs.csv")
    decode_pairs(rows, tmp_path / "cache", 40, 32, 64)
    c = open_cache(tmp_path / "cache")
    assert c["ids"] == ["my pairs-0000000", "my pairs-0000002"]
    assert isinstance(c["spec"], np.memmap) and c["images"].shape == (2, 3, 32, 32)
    assert [r["status"] for r in rows][1] != "ok"

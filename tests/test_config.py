"""Typed params: defaults, the shipped params.yaml, and fail-fast errors naming the key."""
from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from pipeline.config import DemoParams, Params, ParamsError, from_dict, load_params, to_dict
from tests.conftest import ROOT


def test_shipped_params_load_and_match_defaults(tmp_path):
    p = load_params(ROOT / "params.yaml")
    assert p.datasets == {"demo": "demo"}
    # params.yaml spells out every key, so the file documents the full configuration; its values
    # are the defaults except train / finetune / text / analysis / search / segment, a small
    # configuration for the CPU demo (the defaults there are the paper's), and the entries of
    # the shipped demos (the maps are empty by default)
    shipped, defaults = to_dict(p), to_dict(Params())

    def keys(d, prefix=""):
        return {prefix + k for k in d} | {x for k, v in d.items() if isinstance(v, dict)
                                          for x in keys(v, f"{prefix}{k}.")}

    demos = ("analysis.speech.truth.demo", "analysis.concepts.words_files.demo")
    file_keys = keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert keys(defaults) <= file_keys
    extra = file_keys - keys(defaults)
    assert {next(d for d in demos if k == d or k.startswith(d + ".")) for k in extra} == \
        set(demos), extra
    small = ("train", "finetune", "text", "analysis", "search", "segment", "datasets",
             "demo_language", "transfer", "images")
    assert {k: v for k, v in shipped.items() if k not in small} == \
        {k: v for k, v in defaults.items() if k not in small}
    # the opt-in German demo (tests/conftest.py, as docs/guide/transfer.md adds it) loads
    from tests.conftest import with_german_demo
    german = with_german_demo(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert _load(tmp_path, german).transfer.targets == {"demo_de": "demo"}
    assert defaults["train"]["model"]["embed_dim"] == 4096 and defaults["finetune"]["batch"] == 256
    assert defaults["text"]["train"]["model"]["embed_dim"] == 6144      # Tri, as released


def _load(tmp_path, data):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_params(f)


@pytest.mark.parametrize("data, key, words", [
    ({"demo": {"n_videoz": 3}}, "demo.n_videoz", "unknown key"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"manifest": {"youcook2": {"sourcedir": "x"}}}, "manifest.youcook2.sourcedir", "unknown"),
    ({"demo": {"n_videos": "ten"}}, "demo.n_videos", "expected an integer"),
    ({"demo": {"n_videos": 2}}, "demo.n_videos", ">= 4"),
    ({"demo": {"speech": "yes"}}, "demo.speech", "true or false"),
    ({"demo": {"n_videos": True}}, "demo.n_videos", "expected an integer"),
    ({"demo": {"noise_level": 2}}, "demo.noise_level", "<= 1.0"),
    ({"demo": {"min_duration_s": 30, "max_duration_s": 20}}, "demo.min_duration_s", "<="),
    ({"demo": {"frame_sizes": ["320x241"]}}, "demo.frame_sizes[0]", "WIDTHxHEIGHT"),
    ({"demo": {"n_val": 40}}, "demo.n_val", "< n_videos"),
    ({"datasets": {"demo": "demo", "kinetics": "kinetics"}}, "datasets.kinetics", "one of"),
    ({"datasets": ["demo"]}, "datasets", "mapping name -> kind"),
    ({"datasets": "demo"}, "datasets", "expected a mapping"),
    ({"evaluate": {"datasets": ["youcook2"]}}, "evaluate.datasets", "not in `datasets`"),
    ({"manifest": {"msrvtt": {"splits": ["test_1k_b"]}}}, "manifest.msrvtt.splits[0]", "one of"),
    ({"manifest": {"demo": None, "youcook2": 3}}, "manifest.youcook2", "mapping"),
])
def test_bad_params_name_the_key(tmp_path, data, key, words):
    with pytest.raises(ParamsError) as e:
        _load(tmp_path, data)
    msg = str(e.value)
    assert f"{key}:" in msg and words in msg and "params.yaml" in msg


def test_ints_widen_to_float_and_partial_sections_take_defaults(tmp_path):
    p = _load(tmp_path, {"demo": {"min_duration_s": 10}, "manifest": {"demo": {"download": False}}})
    assert p.demo.min_duration_s == 10.0 and isinstance(p.demo.min_duration_s, float)
    assert p.demo.n_videos == DemoParams().n_videos
    assert p.manifest.demo.download is False and p.manifest.youcook2.download is True


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("demo: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    p = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.demo.seed = 3  # type: ignore[misc]
    assert from_dict(DemoParams, {"seed": 5}).seed == 5


@pytest.mark.parametrize("text, words", [
    ("extract:\n  batch_2d: 32\n  batch_2d: 64\n", "line 3: key 'batch_2d' given twice"),
    ("train:\n  lr: 0.01\ntrain:\n  lr: 0.02\n", "line 3: key 'train' given twice"),
    ("extract:\n  batch_2d: 1e30\n", "extract.batch_2d: expected an integer, got float"),
    ("extract:\n  batch_2d: 1000000000000000000000\n", "extract.batch_2d: 1000000000000000000000 "
                                                       "is out of range"),
    ("extract:\n  batch_2d: 100000\n", "extract.batch_2d: must be <= 4096"),
    ("train:\n  epochs: 99999999999\n", "train.epochs: 99999999999 is out of range"),
    ("train:\n  lr: .inf\n", "train.lr: expected a finite number"),
    ("download:\n  backoff_s: 1e300\n", "download.backoff_s: expected a finite number of sane"),
    ("cluster:\n  scheduler_address: nonsense\n", "cluster.scheduler_address: expected tcp://"),
    ("cluster:\n  scheduler_address: 'tcp://:x'\n", "cluster.scheduler_address: expected tcp://"),
])
def test_duplicate_keys_and_absurd_values_fail_naming_file_and_key(tmp_path, text, words):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and words in msg and "\n" not in msg


def test_yaml12_floats_and_valid_scheduler_addresses_load(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 1e-3\ncluster:\n  scheduler_address: tcp://10.0.0.5:8786\n")
    p = load_params(f)
    assert p.train.lr == 0.001 and p.cluster.scheduler_address == "tcp://10.0.0.5:8786"


def test_unreadable_params_files_are_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\x01\xff\xfe")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    for f, words in ((binary, "not UTF-8 text"), (folder, "is a folder")):
        with pytest.raises(ParamsError) as e:
            load_params(f)
        assert str(e.value).startswith(f"{f}: ") and words in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_params_file_that_cannot_be_read_is_one_line():
    # reading /proc/self/mem from offset 0 fails with EIO: a real unreadable file, even as root
    with pytest.raises(ParamsError) as e:
        load_params("/proc/self/mem")
    assert str(e.value) == ("/proc/self/mem: cannot be read (Input/output error); check its "
                            "permissions")

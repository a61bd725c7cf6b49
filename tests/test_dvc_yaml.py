"""dvc.yaml lists, for every stage and dataset, exactly the modules, inputs and params it uses."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.config import DATASETS, KINDS, OWN_KINDS, load_params
from pipeline.data.datasets import MODULES
from tests.conftest import ROOT

PROJECT_PACKAGES = ("pipeline", "stages", "models")
# shared on purpose: the demo's annotations are in YouCook2 format (see dvc.yaml)
SHARED_EXTRA = {"manifest": {"pipeline/data/datasets/youcook2.py"}}


def module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if p.with_suffix(".py").exists():
        return p.with_suffix(".py")
    if (p / "__init__.py").exists():
        return p / "__init__.py"
    return None


def project_imports(module: str) -> set[str]:
    """Files of project modules imported by `module`, transitively (packages' __init__ too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            f = module_file(".".join(parts[:i]))
            if f is None or str(f.relative_to(ROOT)) in seen:
                continue
            seen.add(str(f.relative_to(ROOT)))
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                todo += [t for t in targets if t.split(".")[0] in PROJECT_PACKAGES]
    return seen


# name -> kind: every built-in dataset, plus own-media datasets under names of their own
ALL_DATASETS = {**{k: k for k in DATASETS}, **{f"my-{k}": k for k in OWN_KINDS}}
CLIP_DATASETS = ("demo", "youcook2", "msrvtt", "crosstask", *(f"my-{k}" for k in OWN_KINDS))
FOREACH = {"${datasets}": ALL_DATASETS,
           "${finetune.datasets}": CLIP_DATASETS,
           "${evaluate.datasets}": CLIP_DATASETS,
           # datasets with ASR captions (caption.json): the demo's and HowTo100M's
           "${text.captions}": ("demo", "howto100m"),
           "${text.finetune.datasets}": CLIP_DATASETS,
           "${text.evaluate.datasets}": CLIP_DATASETS,
           "${analysis.speech.datasets}": CLIP_DATASETS,
           "${search.datasets}": CLIP_DATASETS,
           "${segment.datasets}": ("my-custom",),
           # second-language demo -> its settings; transfer target -> its source
           "${demo_language}": {"my-custom": "settings (unused by the stage)"},
           "${transfer.targets}": {"my-custom": "demo"},
           # image sets: the generated demo set
           "${images.sets}": ("demo",),
           # dataset -> its word timings: the demo generator's, or stage speech@'s ASR words
           "${analysis.concepts.words_files}": {
               "demo": "data/demo/words.parquet",
               "youcook2": "data/speech/youcook2/words.parquet"}}
PRETRAIN = {"${train.dataset}": ("demo", "howto100m"),
            "${text.train.dataset}": ("demo", "howto100m")}


def expanded_stages() -> dict[str, dict]:
    """Every stage of dvc.yaml, with foreach expanded over ALL datasets it may take (not just
    params'), and ${train.dataset} over both pretraining datasets."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in raw.items():
        if "foreach" in st:
            items = FOREACH[st["foreach"]]
            for ds in items:
                text = yaml.safe_dump(st["do"])
                if isinstance(items, dict):  # foreach over a mapping: ${key} name, ${item} kind
                    text = text.replace("${key}", ds).replace("${item}", items[ds])
                else:
                    text = text.replace("${item}", ds)
                out[f"{name}@{ds}"] = yaml.safe_load(text)
        elif any(v in yaml.safe_dump(st) for v in PRETRAIN):
            var = next(v for v in PRETRAIN if v in yaml.safe_dump(st))
            for ds in PRETRAIN[var]:
                out[f"{name}[{ds}]"] = yaml.safe_load(yaml.safe_dump(st).replace(var, ds))
        else:
            out[name] = st
    return out


def _paths(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


STAGES = expanded_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_imports_and_nothing_stale(name):
    st = STAGES[name]
    cmd = shlex.split(st["cmd"])
    assert cmd[:2] == ["python", "-m"], f"{name}: stages run as modules"
    needed = project_imports(cmd[2])
    base, _, ds = name.partition("@")
    base = base.partition("[")[0]
    if base == "manifest":  # imported lazily through pipeline.data.datasets.parser
        needed |= project_imports(MODULES[ALL_DATASETS[ds]])
    deps = _paths(st.get("deps"))
    assert needed <= deps, f"{name}: dvc.yaml deps miss {sorted(needed - deps)}"
    code_deps = {d for d in deps if d.endswith(".py")}
    stale = code_deps - needed - SHARED_EXTRA.get(base, set())
    assert not stale, f"{name}: deps list modules it does not import: {sorted(stale)}"
    for d in deps:
        if d.endswith(".py"):
            assert (ROOT / d).exists(), f"{name}: dep {d} does not exist"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_cmd_paths_are_declared_and_params_exist(name):
    st = STAGES[name]
    declared = _paths(st.get("deps")) | _paths(st.get("outs")) | _paths(st.get("metrics"))
    cmd = shlex.split(st["cmd"])
    for flag, value in zip(cmd, cmd[1:]):
        if flag in ("--out", "--source-spec", "--manifest", "--manifests", "--videos", "--ledger",
                    "--availability", "--features", "--init", "--init-av", "--models", "--source",
                    "--captions"):
            assert any(d == value or d.startswith(value.rstrip("/") + "/") for d in declared), (
                f"{name}: {flag} {value} is neither a dep nor an out")
    params = load_params(ROOT / "params.yaml")
    for key in st.get("params", []):
        obj = params
        for part in key.split("."):
            if part.startswith("my-"):  # an own dataset's entry: not in the project's params
                break
            obj = getattr(obj, part)  # AttributeError = a params entry that does not exist


def test_each_dataset_has_a_parser_module_and_source_spec():
    for kind in KINDS:
        assert module_file(MODULES[kind]) is not None, kind
    for ds in DATASETS:
        if ds != "demo":  # the demo's source.yaml is written by stage `demo`
            assert (ROOT / "manifests" / ds / "source.yaml").exists(), ds
    assert re.search(r"foreach: \$\{datasets\}", (ROOT / "dvc.yaml").read_text())


def test_analytics_off():
    assert "analytics = false" in (ROOT / ".dvc" / "config").read_text()

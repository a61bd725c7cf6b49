"""Dataset parsers: official annotation files -> canonical Manifest, one module per dataset."""
from __future__ import annotations

import importlib
from typing import Callable

from pipeline.config import SourceParams
from pipeline.data.manifest import Manifest
from pipeline.data.sources import Sources

# dataset -> module with parse(sources, params) -> Manifest
MODULES = {
    "demo": "pipeline.data.datasets.demo",
    "youcook2": "pipeline.data.datasets.youcook2",
    "msrvtt": "pipeline.data.datasets.msrvtt",
    "crosstask": "pipeline.data.datasets.crosstask",
    "howto100m": "pipeline.data.datasets.howto100m",
    "custom": "pipeline.data.datasets.custom",     # parse(OwnInputs, CustomManifestParams)
    "lsmdc": "pipeline.data.datasets.lsmdc",       # parse(OwnInputs, LsmdcManifestParams)
}


def parser(dataset: str) -> Callable[[Sources, SourceParams], Manifest]:
    """The parse function of `dataset` (imported lazily: each stage loads only its own)."""
    return importlib.import_module(MODULES[dataset]).parse

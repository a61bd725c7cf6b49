"""The generated demo: YouCook2-format annotations whose URLs are project-relative file URLs."""
from __future__ import annotations

from pipeline.config import SourceParams
from pipeline.data.datasets.youcook2 import parse_file
from pipeline.data.manifest import Manifest
from pipeline.data.sources import Sources


def parse(sources: Sources, params: SourceParams) -> Manifest:
    """Parses data/sources/demo/annotations.json (written by stage `demo`, pinned in its
    source.yaml)."""
    return parse_file(sources.get("annotations"), "demo", file_urls=True)

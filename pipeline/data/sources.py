"""Official annotation files: pinned URL + sha256 in source.yaml, a local folder, clear errors."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class SourceError(RuntimeError):
    """An official file that is missing, unreachable or not the pinned one."""


@dataclass(frozen=True)
class SourceFile:
    """One entry of manifests/<ds>/source.yaml."""

    name: str                     # how the parser asks for it
    path: str                     # relative path under the source folder (file, or folder with /)
    url: str | None               # where to fetch it; an archive when `member` is set
    sha256: str | None            # of the file (or folder tree hash); null = not pinned yet
    member: str | None = None     # path inside the archive at `url` (a folder ends with /)
    archive_sha256: str | None = None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of a folder."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _safe_rel(rel: str, what: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise SourceError(f"{what}: {rel!r} is not a safe relative path")
    return p


def load_source_spec(path: Path) -> tuple[str | None, list[SourceFile]]:
    """Reads source.yaml -> (default folder or None, files)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SourceError(f"{path}: missing (every dataset needs a source.yaml)") from None
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML: {e}") from None
    files = []
    for i, entry in enumerate(data.get("files", [])):
        try:
            sf = SourceFile(**entry)
        except TypeError as e:
            raise SourceError(f"{path}: files[{i}]: {e}") from None
        _safe_rel(sf.path, f"{path}: files[{i}].path")
        if sf.url is not None and not sf.url.startswith(("http://", "https://")):
            raise SourceError(f"{path}: files[{i}].url: only http(s) URLs are fetched, "
                              f"got {sf.url!r}")
        files.append(sf)
    return data.get("default_dir"), files


class Sources:
    """Resolves a dataset's official files in a folder, fetching and verifying them on demand.

    `get(name)` returns the local path of a verified file; `used` records what was read, with
    hashes, for manifest.json."""

    def __init__(self, dataset: str, spec_path: Path, folder: Path | None, download: bool,
                 timeout_s: float = 60.0):
        default_dir, files = load_source_spec(spec_path)
        self.dataset, self.spec_path, self.download, self.timeout_s = (
            dataset, spec_path, download, timeout_s)
        self.folder = Path(folder or default_dir or f"data/sources/{dataset}")
        self.files = {f.name: f for f in files}
        self.used: dict[str, dict] = {}

    def get(self, name: str) -> Path:
        """Local path of official file `name`, verified against its pinned sha256."""
        if name not in self.files:
            raise SourceError(f"{self.spec_path}: no file named {name!r} "
                              f"(known: {sorted(self.files)})")
        sf = self.files[name]
        target = self.folder / sf.path
        if not target.exists():
            self._fetch(sf, target)
        digest = sha256_tree(target) if target.is_dir() else sha256_file(target)
        if sf.sha256 and digest != sf.sha256:
            raise SourceError(
                f"{target}: sha256 mismatch: expected {sf.sha256} (pinned in {self.spec_path}), "
                f"got {digest}. The file is not the official release; delete it to re-download, "
                f"or update the pin if the release really changed.")
        if not sf.sha256:
            log.warning("%s: no sha256 pinned in %s; recorded %s in manifest.json (pin it to "
                        "make the manifest reproducible)", target, self.spec_path, digest)
        self.used[name] = {"path": sf.path, "url": sf.url, "sha256": digest,
                           "pinned": bool(sf.sha256)}
        return target

    def _missing(self, sf: SourceFile, target: Path, why: str) -> SourceError:
        return SourceError(
            f"manifest@{self.dataset} needs {sf.path} ({why}). Put it at {target}, or set "
            f"manifest.{self.dataset}.source_dir in params.yaml to a folder that holds it"
            + (f"; it comes from {sf.url}" if sf.url else "") + ".")

    def _fetch(self, sf: SourceFile, target: Path) -> None:
        if sf.url is None:
            raise self._missing(sf, target, "it has no download URL")
        if not self.download:
            raise self._missing(sf, target, f"manifest.{self.dataset}.download is false")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            blob = Path(tmp) / "download"
            log.info("downloading %s -> %s", sf.url, target)
            try:
                digest = _download(sf.url, blob, self.timeout_s)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                raise self._missing(sf, target, f"download failed: {e}") from None
            if sf.archive_sha256 and digest != sf.archive_sha256:
                raise SourceError(f"{sf.url}: sha256 mismatch: expected {sf.archive_sha256} "
                                  f"(pinned in {self.spec_path}), got {digest}")
            if not sf.member:
                os.replace(blob, target)
                return
            # one archive often holds several listed files: extract them all from one download
            for i, o in enumerate(self.files.values()):
                out = self.folder / o.path
                if o.url == sf.url and o.member and (o is sf or not out.exists()):
                    staged = Path(tmp) / f"staged-{i}"
                    _extract_member(blob, o.member, staged, sf.url)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, out)


def _download(url: str, dest: Path, timeout_s: float) -> str:
    """Streams `url` to `dest`; returns its sha256. Short bodies raise (no silent truncation)."""
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "avlnet-pipeline"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r, open(dest, "wb") as f:
        expected = r.headers.get("Content-Length")
        n = 0
        with tqdm(total=int(expected) if expected else None, unit="B", unit_scale=True,
                  desc=Path(url).name, disable=None) as bar:  # disable=None: only on a tty
            while chunk := r.read(CHUNK):
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
        if expected is not None and n != int(expected):
            raise OSError(f"truncated download: {n} of {expected} bytes")
    return h.hexdigest()


def _extract_member(archive: Path, member: str, dest: Path, url: str) -> None:
    """Extracts file or folder `member` (matched by path, or by unique basename) to `dest`."""
    with contextlib.ExitStack() as stack:
        if zipfile.is_zipfile(archive):
            z = stack.enter_context(zipfile.ZipFile(archive))
            names, opener = [n for n in z.namelist() if not n.endswith("/")], z.open
        elif tarfile.is_tarfile(archive):
            t = stack.enter_context(tarfile.open(archive))
            names, opener = [m.name for m in t.getmembers() if m.isfile()], t.extractfile
        else:
            raise SourceError(f"{url}: expected a zip or tar archive holding {member}")
        for n in names:
            _safe_rel(n, f"{url}: archive member")
        try:
            picked = _pick(names, member, dest)
        except SourceError as e:
            raise SourceError(f"{url}: {e}") from None
        for name, out in picked.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener(name) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)


def _pick(names: list[str], member: str, dest: Path) -> dict[str, Path]:
    """Archive names to extract -> output paths: a folder's files, or one file by path/basename."""
    want = PurePosixPath(member.rstrip("/"))
    if member.endswith("/"):
        picked = {n: dest / PurePosixPath(n).relative_to(want) for n in names
                  if PurePosixPath(n).is_relative_to(want)}
    else:
        exact = [n for n in names if PurePosixPath(n) == want]
        by_base = [n for n in names if PurePosixPath(n).name == want.name]
        hit = exact or (by_base if len(by_base) == 1 else [])
        picked = {hit[0]: dest} if hit else {}
    if not picked:
        raise SourceError(f"archive has no member {member!r} (or several share its name)")
    return picked

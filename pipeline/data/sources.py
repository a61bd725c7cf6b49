"""Official annotation files: pinned URL + sha256 in source.yaml, a local folder, clear errors.

Each dataset's input folder is data/sources/<name>/ (SOURCES_ROOT), a declared DVC dependency of
stage manifest@<name>. `avl sources <name>` (stages/sources.py) fills it: it copies the files
from manifest.<name>.source_dir or downloads them from the pinned URLs, checks the pins, and
`dvc add`s the folder. The stage itself only reads the folder (Sources.in_stage), never fetching."""
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
SOURCES_ROOT = Path("data/sources")   # <name>/ under it: a dataset's inputs (a DVC dependency)


def source_folder(dataset: str) -> Path:
    """data/sources/<dataset>: the input folder of dataset `dataset` (project-relative)."""
    return SOURCES_ROOT / dataset


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
    hashes, for manifest.json. A missing file is copied from `copy_from` (a local folder holding
    it at the same relative path) when there, else downloaded when `download`; `fetch_hint`,
    when set, replaces both with one instruction (the stages: they only read)."""

    def __init__(self, dataset: str, spec_path: Path, folder: Path | None, download: bool,
                 timeout_s: float = 60.0, *, copy_from: Path | None = None,
                 fetch_hint: str | None = None):
        default_dir, files = load_source_spec(spec_path)
        self.dataset, self.spec_path, self.download, self.timeout_s = (
            dataset, spec_path, download, timeout_s)
        self.folder = Path(folder or default_dir or source_folder(dataset))
        self.copy_from, self.fetch_hint = copy_from, fetch_hint
        self.files = {f.name: f for f in files}
        self.used: dict[str, dict] = {}

    @classmethod
    def in_stage(cls, dataset: str, spec_path: Path) -> "Sources":
        """What stage manifest@<dataset> reads: data/sources/<dataset> only (its DVC
        dependency, filled by `avl sources <dataset>`), verified against the pins; never
        downloads."""
        return cls(dataset, spec_path, source_folder(dataset), download=False,
                   fetch_hint=f"run `avl sources {dataset}` (or `python -m stages.sources "
                              f"--dataset {dataset}`): it fetches the official files pinned in "
                              f"{spec_path}, checks them and tracks the folder with DVC")

    def fetch_all(self) -> dict[str, dict]:
        """Every file of source.yaml present in the folder and verified (copied or downloaded
        when missing) -> `used` (name -> path, url, sha256, pinned)."""
        for name in self.files:
            self.get(name)
        return self.used

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
                f"got {digest}. The file is not the official release; delete it to re-download"
                + (f" (`avl sources {self.dataset}`)" if self.fetch_hint else "")
                + ", or update the pin if the release really changed.")
        if not sf.sha256:
            log.warning("%s: no sha256 pinned in %s; recorded %s in manifest.json (pin it to "
                        "make the manifest reproducible)", target, self.spec_path, digest)
        self.used[name] = {"path": sf.path, "url": sf.url, "sha256": digest,
                           "pinned": bool(sf.sha256)}
        return target

    def _missing(self, sf: SourceFile, target: Path, why: str) -> SourceError:
        return SourceError(
            f"{self.dataset} needs {sf.path} ({why}). Put it at {target}, or set "
            f"manifest.{self.dataset}.source_dir in params.yaml to a folder that holds it"
            + (f"; it comes from {sf.url}" if sf.url else "") + ".")

    def _fetch(self, sf: SourceFile, target: Path) -> None:
        if self.fetch_hint is not None:
            raise SourceError(f"{target} is missing: {self.fetch_hint}")
        if self.copy_from is not None and (Path(self.copy_from) / sf.path).exists():
            self._copy(sf, Path(self.copy_from) / sf.path, target)
            return
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
                self._check_pin(sf, digest, sf.url)
                os.replace(blob, target)
                return
            # one archive often holds several listed files: extract them all from one download
            for i, o in enumerate(self.files.values()):
                out = self.folder / o.path
                if o.url == sf.url and o.member and (o is sf or not out.exists()):
                    staged = Path(tmp) / f"staged-{i}"
                    _extract_member(blob, o.member, staged, sf.url)
                    self._check_pin(o, sha256_tree(staged) if staged.is_dir()
                                    else sha256_file(staged), f"{sf.url} ({o.member})")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, out)

    def _check_pin(self, sf: SourceFile, digest: str, origin: str | Path) -> None:
        """SourceError unless `digest` (of a fetched or copied file, not yet in the folder)
        matches the pin of `sf` (an unpinned file passes: get() records its hash)."""
        if sf.sha256 and digest != sf.sha256:
            raise SourceError(f"{origin}: sha256 mismatch for {sf.path}: expected {sf.sha256} "
                              f"(pinned in {self.spec_path}), got {digest}; not the official "
                              "release, nothing was kept")

    def _copy(self, sf: SourceFile, src: Path, target: Path) -> None:
        """Copies file or folder `src` to `target` through a temporary name, checked against
        the pin first: a wrong file is refused naming where it came from, and nothing lands."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".copy-") as tmp:
            staged = Path(tmp) / "staged"
            log.info("copying %s -> %s", src, target)
            if src.is_dir():
                shutil.copytree(src, staged)
                digest = sha256_tree(staged)
            else:
                shutil.copyfile(src, staged)
                digest = sha256_file(staged)
            self._check_pin(sf, digest, f"{src} (manifest.{self.dataset}.source_dir)")
            os.replace(staged, target)


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


class OwnInputs:
    """The counterpart of Sources for own media (custom, lsmdc): the input folder
    data/sources/<name>; resolves its files and records the list and annotation files read
    (with sha256) for manifest.json."""

    def __init__(self, dataset: str, folder: Path):
        self.dataset, self.folder = dataset, Path(folder)
        self.used: dict[str, dict] = {}

    def path(self, rel: str) -> Path:
        """`rel` inside the input folder (or an absolute path as it is)."""
        return Path(rel) if os.path.isabs(rel) else self.folder / rel

    def file(self, key: str, rel: str, param: str) -> Path:
        """An input file that must exist, recorded with its sha256."""
        p = self.path(rel)
        if not p.is_file():
            raise SourceError(f"{p}: not found: put the file there or set "
                              f"manifest.{self.dataset}.{param} in params.yaml")
        self.used[key] = {"path": str(p), "sha256": sha256_file(p), "pinned": False}
        return p

    def media_root(self, rel: str | None) -> Path | None:
        """The media folder (absolute), or None when not configured."""
        if rel is None:
            return None
        return self.path(rel).absolute()

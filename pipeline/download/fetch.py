"""One video, one attempt: URL safety, yt-dlp (one reused YoutubeDL per thread), probe, hash."""
from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.download.availability import Outcome, classify
from pipeline.config import DownloadParams
from pipeline.download.ledger import AVAILABLE, TRANSIENT, UNAVAILABLE, now
from pipeline.data.manifest import YOUTUBE_ID
from pipeline.media import MediaAccessError, ProbeError, SpecialFileError, check_regular, probe
from pipeline.data.sources import sha256_file

log = logging.getLogger(__name__)


class UrlRejected(ValueError):
    """A URL the download stage will not fetch (scheme, or a file: URL outside the root)."""


def ytdlp_version() -> str:
    from yt_dlp.version import __version__
    return __version__


OWN_ID = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}\Z")   # own media (custom.stable_id)


def check_id(video_id: str) -> str:
    """The id, if it is an 11-character YouTube id or an own-media id (letters, digits, '_',
    '-', '.', not starting with '.'): only such ids become file names."""
    if not isinstance(video_id, str) or not (YOUTUBE_ID.match(video_id)
                                             or OWN_ID.match(video_id)):
        raise ValueError(f"refusing video id {video_id!r}: neither an 11-character YouTube id "
                         "nor a path-safe id ([A-Za-z0-9_.-], not starting with '.'); ids "
                         "become file names")
    return video_id


def resolve_url(url: str, file_root: Path | None, cwd: Path) -> str:
    """http(s) URLs as they are; file: URLs (absolute, or project-relative `file:data/...`) as an
    absolute file:// URL, only when the file lies under `file_root`. Anything else raises."""
    path = local_path(url, file_root, cwd)
    return url if path is None else path.as_uri()


def local_path(url: str, file_root: Path | None, cwd: Path) -> Path | None:
    """None for http(s) URLs; the resolved file a file: URL names, only when it lies under
    `file_root`. Any other URL raises UrlRejected."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme != "file":
        raise UrlRejected(f"refusing URL {url!r}: only http(s) URLs are fetched "
                          "(and file: URLs under download.file_root)")
    if file_root is None:
        raise UrlRejected(f"refusing URL {url!r}: file: URLs are disabled "
                          "(set download.file_root to the folder they may point into)")
    rest = url[len("file:"):]
    if rest.startswith("//"):
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UrlRejected(f"refusing URL {url!r}: file URLs with a host are not local")
        rest = parts.path
    path = Path(urllib.parse.unquote(rest))
    path = (path if path.is_absolute() else cwd / path).resolve()
    root = (file_root if file_root.is_absolute() else cwd / file_root).resolve()
    if not path.is_relative_to(root):
        raise UrlRejected(f"refusing URL {url!r}: {path} is outside download.file_root {root}")
    return path


class _YdlLog:
    """yt-dlp's messages into our logging (debug), never onto the terminal."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.debug("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp error: %s", msg)


def ydl_options(p: DownloadParams, videos_dir: Path) -> dict[str, Any]:
    """YoutubeDL options from the download params; files land in videos_dir/<id[:2]>/<id>.<ext>."""
    opts = {
        "format": p.format, "format_sort": list(p.format_sort),
        "merge_output_format": p.merge_output_format,
        "outtmpl": {"default": str(videos_dir.resolve() / "%(avl_prefix)s" / "%(avl_id)s.%(ext)s")},
        "retries": p.retries, "fragment_retries": p.fragment_retries,
        "extractor_retries": p.extractor_retries, "socket_timeout": p.socket_timeout_s,
        "noplaylist": True, "overwrites": False, "continuedl": True, "noprogress": True,
        "quiet": True, "no_warnings": True, "logger": _YdlLog(), "color": "no_color",
        "enable_file_urls": False,
    }
    if p.sleep_interval_s:
        opts["sleep_interval"] = p.sleep_interval_s
        if p.max_sleep_interval_s:
            opts["max_sleep_interval"] = p.max_sleep_interval_s
    if p.sleep_requests_s:
        opts["sleep_interval_requests"] = p.sleep_requests_s
    if p.ratelimit_bytes_s:
        opts["ratelimit"] = p.ratelimit_bytes_s
    if p.cookiefile:
        opts["cookiefile"] = p.cookiefile
    if p.proxy:
        opts["proxy"] = p.proxy
    return opts


@dataclass
class Fetcher:
    """Downloads videos one at a time with one reused YoutubeDL (so: one Fetcher per thread).

    `extractors` are yt-dlp InfoExtractor classes tried before the built-in ones (tests use a
    fake YouTube extractor); `pace_s` is the minimum time between this fetcher's videos."""

    params: DownloadParams
    videos_dir: Path
    root: Path                                  # project root: paths in the ledger are relative
    extractors: tuple = ()
    pace_s: float = 0.0
    _ydls: dict = field(default_factory=dict, repr=False)
    _last_start: float = field(default=0.0, repr=False)

    def ydl(self, files: bool = False):
        """The reused YoutubeDL; file: URLs are enabled only in a second one that is used for
        targets already checked to lie under file_root, so an http(s) page can never make
        yt-dlp read a local file."""
        if files not in self._ydls:
            import yt_dlp
            opts = {**ydl_options(self.params, self.videos_dir), "enable_file_urls": files}
            ydl = yt_dlp.YoutubeDL(opts, auto_init=False)
            for ie in self.extractors:  # before the built-in ones, whose generic takes any URL
                ydl.add_info_extractor(ie() if isinstance(ie, type) else ie)
            ydl.add_default_info_extractors()
            self._ydls[files] = ydl
        return self._ydls[files]

    def source_file(self, url: str) -> Path | None:
        """The local file a file: URL names; None for http(s) or a URL attempt() would refuse."""
        try:
            return local_path(url, self._file_root(), self.root)
        except UrlRejected:
            return None

    def _file_root(self) -> Path | None:
        root = self.params.reference_root or self.params.file_root
        return Path(root) if root else None

    def _pace(self) -> None:
        wait = self._last_start + self.pace_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_start = time.monotonic()

    def attempt(self, video_id: str, url: str) -> dict:
        """One try at one video -> the outcome fields of an attempt row (no ids or times).

        Per-item failures become an outcome; KeyboardInterrupt and our own bugs propagate."""
        check_id(video_id)
        try:
            source = local_path(url, self._file_root(), self.root)
        except UrlRejected as e:
            return _failure(Outcome(TRANSIENT, "url_rejected", "configuration", str(e),
                                    "UrlRejected", None))
        if source is not None and self.params.reference_root:
            return self._reference(source)
        refused = (_check_source(source) if source is not None else None) \
            or self._check_target(video_id)
        if refused is not None:
            return refused
        self._pace()
        try:
            ydl = self.ydl(files=source is not None)
            info = ydl.extract_info(url if source is None else source.as_uri(), download=True,
                                    extra_info={"avl_id": video_id, "avl_prefix": video_id[:2]})
        except Exception as e:  # the one per-item boundary around yt-dlp
            return _failure(classify(e))
        return self._finish(info)

    def probe(self, video_id: str, url: str) -> Outcome | None:
        """Whether the site answers for this video, without downloading it (the circuit
        breaker's test of the network): None when it does (the video's page or file was
        reached, even if it says the video is gone), else the failure's Outcome. A file: URL
        tells nothing about the network: None. Make the Fetcher with retries 0 to keep a probe
        to one request."""
        check_id(video_id)
        try:
            if local_path(url, self._file_root(), self.root) is not None:
                return None
        except UrlRejected as e:
            return Outcome(TRANSIENT, "url_rejected", "configuration", str(e), "UrlRejected",
                           None)
        try:
            self.ydl().extract_info(url, download=False, process=False)
        except Exception as e:  # the one per-probe boundary around yt-dlp
            return classify(e)
        return None

    def _reference(self, source: Path) -> dict:
        """Own media: the local file is probed and hashed where it is, never copied or moved;
        the ledger's path names it (project-relative when inside the project)."""
        refused = _check_source(source)
        if refused is not None:
            return refused
        if not source.exists():
            return _failure(Outcome(UNAVAILABLE, "not_found", "permanent",
                                    f"{source}: no such file", "FileNotFoundError", None))
        root = Path(self.root).resolve()
        rel = source.relative_to(root).as_posix() if source.is_relative_to(root) \
            else str(source)
        return _examine(source, rel, "local", remove_invalid=False)

    def _check_target(self, video_id: str) -> dict | None:
        """A local_error outcome when something other than a regular file sits where yt-dlp
        would write or resume (a FIFO there would block it forever), else None."""
        folder = self.videos_dir / video_id[:2]
        for p in sorted(folder.glob(f"{video_id}.*")) if folder.is_dir() else ():
            try:
                check_regular(p)
            except FileNotFoundError:
                continue
            except OSError as e:
                return local_failure(e)
        return None

    def _finish(self, info: dict) -> dict:
        downloads = info.get("requested_downloads") or []
        path = Path(downloads[0]["filepath"]) if downloads else None
        if path is None or not os.path.lexists(path):
            return local_failure("yt-dlp reported success but no file was written",
                                 "MissingFile")
        return _examine(path, os.path.relpath(path, self.root), info.get("format_id"),
                        remove_invalid=True)


def _examine(path: Path, rel: str, format_id: str | None, remove_invalid: bool) -> dict:
    """The outcome for the media file at `path` (recorded as `rel`): probed and hashed ->
    available; not media -> file_invalid, permanent (a download gets the same bytes again: with
    `remove_invalid` the bad file is removed, never left looking finished; own media are left
    as they are); unreadable -> this machine's local_error, the file untouched."""
    try:
        meta = probe(path)
        size, sha = path.stat().st_size, sha256_file(path)
    except MediaAccessError as e:
        return local_failure(str(e), "MediaAccessError")
    except ProbeError as e:
        if remove_invalid:
            try:
                path.unlink(missing_ok=True)
            except OSError as u:
                log.warning("%s: cannot remove the invalid download (%s)", path, u.strerror)
        return _failure(Outcome(UNAVAILABLE, "file_invalid", "permanent", str(e),
                                "ProbeError", None))
    except OSError as e:
        return local_failure(e)
    meta.pop("has_video")
    return {"status": AVAILABLE, "reason": None, "kind": None, "message": None,
            "exc_class": None, "http_status": None, "ytdlp_version": ytdlp_version(),
            "path": rel, "filesize": size, "sha256": sha, "format_id": format_id, **meta}


def _check_source(source: Path) -> dict | None:
    """The outcome for a file: URL's file that must not reach yt-dlp, or None: a special file
    (a FIFO would hang the copy) is refused unopened, an empty one is not media, an unreadable
    one is this machine's problem. A missing one goes on: yt-dlp reports it (not_found)."""
    try:
        st = check_regular(source)
        with open(source, "rb"):
            pass
    except FileNotFoundError:
        return None
    except SpecialFileError as e:
        return _failure(Outcome(TRANSIENT, "url_rejected", "configuration",
                                f"refusing URL: {e}", "SpecialFileError", None))
    except OSError as e:
        return local_failure(e)
    if st.st_size == 0:
        return _failure(Outcome(UNAVAILABLE, "file_invalid", "permanent",
                                f"{source}: empty file (0 bytes), not media", "ProbeError", None))
    return None


def local_failure(e: OSError | str, exc_class: str | None = None) -> dict:
    """The outcome of a problem on this machine (a file that cannot be read or written, a
    special file in the way): the video's local_error, tried again by the next run."""
    if isinstance(e, OSError):
        what = str(e) if isinstance(e, SpecialFileError) or not e.strerror \
            else f"{e.filename or 'a file'}: {e.strerror}"
        return _failure(Outcome(TRANSIENT, "local_error", "local", what, type(e).__name__, None))
    return _failure(Outcome(TRANSIENT, "local_error", "local", e, exc_class or "LocalError",
                            None))


def _failure(o: Outcome) -> dict:
    return {"status": o.status, "reason": o.reason, "kind": o.kind, "message": o.message,
            "exc_class": o.exc_class, "http_status": o.http_status,
            "ytdlp_version": ytdlp_version(), "path": None, "filesize": None, "sha256": None,
            "duration_s": None, "width": None, "height": None, "vcodec": None, "acodec": None,
            "has_audio": None, "format_id": None}


def matches(path: Path, row: dict, verify: str) -> bool | None:
    """Whether the file at `path` is the one `row` recorded (size, and sha256 if asked);
    None when there is no such file. A special file there raises SpecialFileError unopened,
    an unreadable one OSError: the caller records them as the video's local_error."""
    try:
        st = check_regular(path)
    except FileNotFoundError:
        return None
    if st.st_size != row["filesize"]:
        return False
    return verify == "size" or sha256_file(path) == row["sha256"]


def source_unchanged(source: Path | None, row: dict, verify: str) -> bool:
    """False when `source`, the local file a file: URL names, exists and differs from what was
    downloaded from it (size, and sha256 if asked): yt-dlp copies such a file byte for byte, so
    a difference means the source was rewritten (the demo regenerated with other params) and the
    downloaded copy, and any features made from it, are stale. None (an http(s) URL) or a source
    that is gone: True, the copy stands, as a video deleted from YouTube keeps its copy. OSError
    when the source cannot be read."""
    return source is None or matches(source, row, verify) is not False


def file_ok(root: Path, row: dict, verify: str) -> bool:
    """An available video's file is still there and unchanged (size, and sha256 if asked);
    OSError when it cannot be read (see matches)."""
    return bool(row.get("path")) and bool(matches(root / row["path"], row, verify))


def backoff(p: DownloadParams, k: int, rng: random.Random) -> float:
    """Wait before try k+1 (k >= 1): exponential from backoff_s, capped, with +-50 % jitter."""
    return min(p.max_backoff_s, p.backoff_s * 2 ** (k - 1)) * rng.uniform(0.5, 1.5)


def new_attempt_id() -> str:
    return uuid.uuid4().hex


_local = threading.local()


def thread_fetcher(key: Any, make: Callable[[], Fetcher]) -> Fetcher:
    """This thread's Fetcher for `key` (one per worker thread, built once, reused)."""
    cache = getattr(_local, "fetchers", None)
    if cache is None:
        cache = _local.fetchers = {}
    if key not in cache:
        cache[key] = make()
    return cache[key]


__all__ = ["Fetcher", "UrlRejected", "backoff", "check_id", "file_ok", "local_failure",
           "new_attempt_id", "now", "resolve_url", "thread_fetcher", "ydl_options",
           "ytdlp_version"]

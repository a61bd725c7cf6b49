"""Availability taxonomy (datasets.md): a download failure -> status, reason and kind.

Classification looks at the exception class first, then at the lower-cased message with
typographic apostrophes made plain. Transient classes are tested first, so a bot check or a
network error can never be mistaken for a permanently unavailable video."""
from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

from pipeline.download.ledger import NEEDS_AUTH, PENDING, TRANSIENT, UNAVAILABLE

# kind -> the status a failure of that kind leaves the video in. Rate limiting and bot checks
# leave it pending: nothing was learnt about the video itself.
KIND_STATUS = {
    "throttled": PENDING,
    "transient": TRANSIENT,
    "configuration": TRANSIENT,   # our settings (format, cookies) are at fault, not the video
    "permanent": UNAVAILABLE,
    "regional": UNAVAILABLE,      # gone from here; a proxy elsewhere may still get it
    "needs_auth": NEEDS_AUTH,
    "local": TRANSIENT,           # this machine (permissions, disk, special files): fix, re-run
}

# (reason, kind, message patterns), tested in this order: transient ones first
RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("bot_check", "throttled", (
        "sign in to confirm you're not a bot", "confirm you're not a bot", "captcha",
        "this content isn't available, try again later", "your ip is likely being blocked")),
    ("rate_limited", "throttled", (
        "http error 429", "too many requests", "you've hit the request limit", "rate limit")),
    ("network", "transient", (
        "timed out", "timeout", "connection refused", "connection reset", "connection aborted",
        "failed to establish a new connection", "name or service not known",
        "temporary failure in name resolution", "incomplete read", "incompleteread",
        "more expected", "bytes read", "remote end closed", "http error 5", "network is unreachable",
        "eof occurred", "did not get any data blocks")),   # an empty answer: YouTube's CDN
    ("extractor_broken", "transient", (
        "unable to extract", "please report this issue", "nsig extraction failed",
        "signature extraction failed", "unable to download api page")),
    ("not_yet_live", "transient", ("this live event will begin in", "premieres in")),
    # yt-dlp reports its own file errors as text only ("unable to open for writing: [Errno 13]")
    ("local_error", "local", ("unable to open for writing", "permission denied",
                              "no space left on device", "read-only file system",
                              "disk quota exceeded", "unable to rename file")),
    ("age_restricted", "needs_auth", ("sign in to confirm your age", "age-restricted",
                                      "inappropriate for some users")),
    ("members_only", "needs_auth", ("join this channel to get access to members-only content",
                                    "members-only content")),
    ("paid", "needs_auth", ("requires payment", "music premium")),
    ("private", "permanent", ("private video",)),
    ("geo_blocked", "regional", ("not made this video available in your country",
                                 "not available in your country", "in your country")),
    ("removed_by_uploader", "permanent", ("this video has been removed by the uploader",
                                          "removed by the uploader")),
    ("account_terminated", "permanent", ("youtube account associated with this video has been "
                                         "terminated", "account associated with this video has "
                                         "been terminated")),
    ("copyright", "permanent", ("copyright claim", "blocked it on copyright grounds",
                                "copyright grounds")),
    ("policy_removed", "permanent", ("violating youtube's terms of service",
                                     "community guidelines", "terms of service")),
    ("format_unavailable", "configuration", ("requested format is not available",)),
    ("invalid_id", "permanent", ("incomplete youtube id", "unsupported url")),
    ("not_found", "permanent", ("http error 404", "http error 410")),
    ("forbidden", "transient", ("http error 403",)),   # YouTube's 403s are mostly throttling
    ("unavailable_unspecified", "permanent", ("video unavailable", "this video is unavailable",
                                              "video is not available")),
]
REASONS = tuple(dict.fromkeys([r for r, _, _ in RULES] + [
    "unknown", "file_invalid", "local_error", "url_rejected"]))

# errno values of an OSError that mean this machine refused, not the network or the video
LOCAL_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO,
                errno.EISDIR, errno.ENOTDIR, errno.ELOOP}

# reasons that say the network or the site failed, not the video: a run of them in a row trips
# the download's circuit breaker (runner.Breaker), which probes one video before going on
BREAKER_REASONS = ("network", "rate_limited", "bot_check", "forbidden")

# what to do when a reason dominates a run's failures: the stage's last line (issue 18)
ADVICE = {
    "bot_check": "YouTube is bot-checking this machine: set download.cookiefile (cookies of a "
                 "signed-in account), slow down (download.max_videos_per_hour, "
                 "sleep_interval_s) or use download.proxy, then re-run later (it resumes)",
    "rate_limited": "YouTube is rate-limiting this machine: lower download.max_videos_per_hour "
                    "or use download.proxy, then re-run later (it resumes)",
    "forbidden": "HTTP 403, mostly throttling: set download.cookiefile and slower pacing, then "
                 "re-run later (it resumes)",
    "network": "check the network connection (and download.proxy), then re-run (it resumes)",
    "extractor_broken": "yt-dlp cannot read the site any more: update it "
                        "(pip install -U yt-dlp), then re-run",
    "not_yet_live": "live events or premieres that have not started: re-run once they have",
    "format_unavailable": "no format matches download.format: relax it, then re-run",
    "url_rejected": "the manifest's URLs are refused (not http(s); or file: URLs outside "
                    "download.file_root or naming a special file): fix them or the setting",
    "local_error": "files or folders on this machine cannot be read or written (permissions, "
                   "a full disk, special files): the `message` column of availability.parquet "
                   "names them; fix them, then re-run",
    "file_invalid": "downloads that are not readable media (empty, random bytes, truncated): "
                    "see `message` in availability.parquet; they are re-checked only with "
                    "--recheck-unavailable",
    "unknown": "unclassified errors: read the `message` column of availability.parquet",
}


def advice(reason: str | None) -> str:
    """What to do about failures of `reason` (availability.REASONS), in one clause."""
    return ADVICE.get(reason or "unknown", ADVICE["unknown"])


def diagnosis(reason: str | None) -> str:
    """What a run of failures of `reason` (one of BREAKER_REASONS) says about this machine."""
    return {"network": "the network looks unreachable",
            "forbidden": "the site refuses this machine (HTTP 403: mostly throttling or a "
                         "block of this IP)"}.get(
        reason or "", "the site is throttling or blocking this machine's IP (rate limits, "
                      "bot checks)")


@dataclass(frozen=True)
class Outcome:
    """How one failed attempt is recorded."""

    status: str
    reason: str
    kind: str
    message: str
    exc_class: str
    http_status: int | None

    @property
    def throttled(self) -> bool:
        """Counts towards the circuit breaker (bot checks, rate limits)."""
        return self.kind == "throttled"


def normalize(msg: str) -> str:
    """Lower-case with typographic apostrophes and quotes made plain (YouTube uses both)."""
    msg = msg.lower()
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u02bc", "'"), ("\u201c", '"'),
                 ("\u201d", '"')):
        msg = msg.replace(a, b)
    return re.sub(r"\s+", " ", msg)


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and its causes, outermost first: DownloadError keeps its cause in exc_info[1],
    ExtractorError in exc_info or .cause, others chain with __cause__."""
    chain = [exc]
    while len(chain) < 20:
        info = getattr(exc, "exc_info", None)
        nxt = info[1] if isinstance(info, tuple) and len(info) > 1 and info[1] is not None \
            else getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(nxt, BaseException) or any(nxt is c for c in chain):
            break
        chain.append(exc := nxt)
    return chain


# yt-dlp prefixes messages with "ERROR: [extractor] VIDEO_ID: "; the id must not decide a reason
_PREFIX = re.compile(r"^(?:error:\s*)?\[[^\]]+\]\s*(?:[^\s:]+:\s)?")


def _text(chain: list[BaseException]) -> str:
    """The messages of the chain, normalised, without yt-dlp's extractor/id prefixes."""
    parts = []
    for e in chain:
        msg = getattr(e, "orig_msg", None) or str(e)
        parts.append(_PREFIX.sub("", normalize(msg)))
    return " | ".join(parts)


def _by_class(cause: BaseException, status: int | None) -> tuple[str, str] | None:
    """(reason, kind) decided by the exception class alone, or None."""
    names = {c.__name__ for c in type(cause).__mro__}
    if status == 429:
        return "rate_limited", "throttled"
    if status is not None and 500 <= status < 600:
        return "network", "transient"
    if "GeoRestrictedError" in names:
        return "geo_blocked", "regional"
    if names & {"TransportError", "IncompleteRead", "ContentTooShortError", "TimeoutError",
                "ConnectionError", "SSLError", "ProxyError"}:
        return "network", "transient"
    if "UnsupportedError" in names:
        return "invalid_id", "permanent"
    if "FileNotFoundError" in names:   # a file: URL (the demo) whose file is gone
        return "not_found", "permanent"
    if isinstance(cause, OSError) and not isinstance(cause, socket.gaierror) \
            and cause.errno in LOCAL_ERRNOS:
        return "local_error", "local"
    if "ExtractorError" in names and getattr(cause, "expected", True) is False:
        return "extractor_broken", "transient"  # yt-dlp did not expect it: a broken extractor
    return None


def classify(exc: BaseException) -> Outcome:
    """A failed yt-dlp call (or any exception from one attempt) -> its ledger outcome."""
    chain = _chain(exc)
    cause = chain[-1]
    status = next((s for e in chain if isinstance(s := getattr(e, "status", None), int)), None)
    message = str(exc) if str(exc) else repr(exc)
    reason = kind = None
    for e in reversed(chain):   # the exception class decides first (transient ones among them)
        if by_class := _by_class(e, status):
            reason, kind = by_class
            break
    if reason is None:
        text = _text(chain)
        for r, k, patterns in RULES:
            if any(p in text for p in patterns):
                reason, kind = r, k
                break
    if reason is None:
        reason, kind = "unknown", "transient"   # never guess "unavailable"
    return Outcome(KIND_STATUS[kind], reason, kind, message.strip()[:2000],
                   type(cause).__name__, status)

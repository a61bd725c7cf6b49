"""Availability taxonomy end to end (datasets.md): a fake YouTube extractor that fails the way the
real one does, through Fetcher.attempt, classify, and the dask download orchestrator (re-runs,
re-check, circuit breaker). Offline: media and HTTP errors come from a server on 127.0.0.1."""
from __future__ import annotations

import collections
import http.server
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from yt_dlp.extractor.common import InfoExtractor
from yt_dlp.networking.common import Response
from yt_dlp.networking.exceptions import HTTPError, IncompleteRead, TransportError
from yt_dlp.utils import DownloadError as YtDownloadError
from yt_dlp.utils import ExtractorError, GeoRestrictedError, UnsupportedError

from pipeline.download.availability import REASONS, classify, normalize
from pipeline.config import ClusterParams, DownloadParams
from pipeline.download.breaker import Breaker, Hold, short, stop_line
from pipeline.download.runner import download
from pipeline.download.fetch import Fetcher
from pipeline.download.ledger import PENDING, UNAVAILABLE, read_attempts, read_availability

# The orchestrator loads extractors by name ("tests.test_taxonomy:FakeYouTubeIE") while pytest
# imports this file as "test_taxonomy": one module object under both names keeps one TABLE.
sys.modules.setdefault("tests.test_taxonomy", sys.modules[__name__])
FAKE_SPEC = "tests.test_taxonomy:FakeYouTubeIE"

# video id -> (action, argument[, seconds to stall first]); read by FakeYouTubeIE at extract time
TABLE: dict[str, tuple] = {}
# while set, "flaky" videos fail with a real connection error (the network is down)
DOWN = threading.Event()

# storyboards are what YouTube still lists when every playable format is gone
STORYBOARD_ONLY = [{"format_id": "sb0", "url": "http://127.0.0.1:9/sb/M0.jpg", "ext": "mhtml",
                    "protocol": "mhtml", "vcodec": "none", "acodec": "none", "width": 48,
                    "height": 27}]


class FakeYouTubeIE(InfoExtractor):
    """YouTube as yt-dlp's extractor sees it, offline: each id in TABLE fails with the real
    message through the real helper (raise_no_formats, raise_geo_restricted, raise_login_required,
    a real HTTP request) or returns a real media URL / format list."""

    IE_NAME = "FakeYouTube"
    _VALID_URL = r"https?://fake\.youtube\.test/watch\?v=(?P<id>[A-Za-z0-9_-]{11})"

    def _real_extract(self, url):
        vid = self._match_id(url)
        action, arg, *stall = TABLE[vid]
        if stall:
            time.sleep(stall[0])
        if action == "playability":
            # extractor/youtube/_video.py: the player's playability reason, rewritten like this
            reason = arg
            if "sign in" in reason.lower():
                reason = f"{reason.strip().removesuffix('.')}. {self._login_hint(method='cookies')}"
            elif "This content isn't available, try again later" in reason:
                reason = (f"{reason.strip().removesuffix('.')}. The current session has been "
                          "rate-limited by YouTube for up to an hour.")
            self.raise_no_formats(reason, expected=True)
        elif action == "geo":
            self.raise_geo_restricted(**arg)
        elif action == "login":
            self.raise_login_required(arg, method="cookies")
        elif action == "broken":
            raise ExtractorError(arg, expected=False)
        elif action == "expected":
            raise ExtractorError(arg, expected=True)
        elif action == "api":   # a real request: HTTPError / TransportError as yt-dlp makes them
            self._download_webpage(arg, vid, note="Downloading player API JSON")
            raise AssertionError(f"{arg} was expected to fail")
        elif action == "unsupported":
            raise UnsupportedError(url)
        elif action == "formats":
            return {"id": vid, "title": vid, "formats": arg}
        elif action == "media":
            return {"id": vid, "title": vid, "url": arg, "ext": "mp4"}
        elif action == "flaky":   # arg: (a URL nothing listens on, the media URL)
            if DOWN.is_set():
                self._download_webpage(arg[0], vid, note="Downloading player API JSON")
                raise AssertionError(f"{arg[0]} was expected to fail")
            return {"id": vid, "title": vid, "url": arg[1], "ext": "mp4"}
        raise AssertionError(f"unknown fake action {action!r}")


class OtherFakeIE(FakeYouTubeIE):
    """The same fake under a name yt-dlp's own registry has never heard of."""


@pytest.fixture(autouse=True)
def _fresh_table():
    TABLE.clear()
    DOWN.clear()
    yield
    TABLE.clear()
    DOWN.clear()


# --------------------------------------------------------------------------- local media server


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    """A real 2 s 320x240 H.264 + AAC mp4 (~30 kB)."""
    out = tmp_path_factory.mktemp("media") / "x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=10", "-f", "lavfi", "-i", "sine", "-t", "2",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(out)], check=True,
                   timeout=60)
    return out


@pytest.fixture(scope="module")
def server(mp4):
    """(base URL, a port with nothing listening): /ok.mp4 serves the mp4, /status/N answers N."""
    body = mp4.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/ok.mp4":
                status, ctype, data = 200, "video/mp4", body
            elif self.path.startswith("/status/"):
                status, ctype, data = int(self.path.split("/")[2]), "text/plain", b"nope"
            else:
                status, ctype, data = 404, "text/plain", b"not found"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", dead
    finally:
        srv.shutdown()
        srv.server_close()


def fake_url(vid: str) -> str:
    return f"https://fake.youtube.test/watch?v={vid}"


def small_params(**kw) -> DownloadParams:
    base = dict(retries=0, fragment_retries=0, extractor_retries=0, socket_timeout_s=5.0,
                attempts_per_run=2, backoff_s=0.0, breaker_threshold=1000, min_free_gb=0.0)
    return DownloadParams(**{**base, **kw})


# --------------------------------------------------------------------------- one class per case

BOT = "Sign in to confirm you\u2019re not a bot"   # YouTube's typographic apostrophe

# name -> (fake entry, with {base}/{dead} filled in, expected status, reason, kind, http_status)
CASES = {
    "bot_check": (("playability", BOT), "pending", "bot_check", "throttled", None),
    "bot_check_try_later": (("playability", "This content isn't available, try again later."),
                            "pending", "bot_check", "throttled", None),
    "rate_limited_message": (("playability", "You've hit the request limit"),
                             "pending", "rate_limited", "throttled", None),
    "rate_limited_429": (("api", "{base}/status/429"), "pending", "rate_limited", "throttled",
                         429),
    "network_503": (("api", "{base}/status/503"), "transient_failure", "network", "transient",
                    503),
    "network_refused": (("api", "http://127.0.0.1:{dead}/youtubei/v1/player"),
                        "transient_failure", "network", "transient", None),
    "extractor_broken_unable": (("broken", "Unable to extract yt initial data"),
                                "transient_failure", "extractor_broken", "transient", None),
    "extractor_broken_nsig": (("expected", "nsig extraction failed: Some formats may be missing"),
                              "transient_failure", "extractor_broken", "transient", None),
    "extractor_broken_unexpected": (("broken", "Cannot parse the player response"),
                                    "transient_failure", "extractor_broken", "transient", None),
    "extractor_broken_unexpected_private": (("broken", "Private video"), "transient_failure",
                                            "extractor_broken", "transient", None),
    "private": (("playability", "Private video. Sign in if you've been granted access to this "
                 "video"), "unavailable", "private", "permanent", None),
    "removed_by_uploader": (("playability", "This video has been removed by the uploader"),
                            "unavailable", "removed_by_uploader", "permanent", None),
    "account_terminated": (("playability", "This video is no longer available because the "
                            "YouTube account associated with this video has been terminated."),
                           "unavailable", "account_terminated", "permanent", None),
    "copyright_claim": (("playability", "This video is no longer available due to a copyright "
                         "claim by Example Records."), "unavailable", "copyright", "permanent",
                        None),
    "copyright_blocked": (("playability", "This video contains content from Example Records, who "
                           "has blocked it on copyright grounds."), "unavailable", "copyright",
                          "permanent", None),
    "copyright_in_your_country": (("playability", "This video contains content from Example "
                                   "Records, who has blocked it in your country on copyright "
                                   "grounds."), "unavailable", "geo_blocked", "regional", None),
    "policy_terms": (("playability", "This video has been removed for violating YouTube\u2019s "
                      "Terms of Service"), "unavailable", "policy_removed", "permanent", None),
    "policy_guidelines": (("playability", "This video has been removed for violating YouTube's "
                           "Community Guidelines"), "unavailable", "policy_removed", "permanent",
                          None),
    "age_restricted": (("login", "Sign in to confirm your age. This video may be inappropriate "
                        "for some users."), "needs_auth", "age_restricted", "needs_auth", None),
    "members_only": (("playability", "Join this channel to get access to members-only content "
                      "like this video, and other exclusive perks."), "needs_auth",
                     "members_only", "needs_auth", None),
    "paid": (("playability", "This video requires payment to watch."), "needs_auth", "paid",
             "needs_auth", None),
    "paid_music_premium": (("playability", "This video is only available to Music Premium "
                            "members"), "needs_auth", "paid", "needs_auth", None),
    "geo_blocked_message": (("geo", {"msg": "The uploader has not made this video available in "
                                     "your country", "countries": ["US", "CA"]}),
                            "unavailable", "geo_blocked", "regional", None),
    "geo_blocked_default": (("geo", {}), "unavailable", "geo_blocked", "regional", None),
    "not_yet_live": (("playability", "This live event will begin in 3 hours."),
                     "transient_failure", "not_yet_live", "transient", None),
    "premiere": (("playability", "Premieres in 2 hours"), "transient_failure", "not_yet_live",
                 "transient", None),
    "unavailable_unspecified": (("playability", "Video unavailable"), "unavailable",
                                "unavailable_unspecified", "permanent", None),
    "format_unavailable": (("formats", STORYBOARD_ONLY), "transient_failure",
                           "format_unavailable", "configuration", None),
    "invalid_id_incomplete": (("expected", "Incomplete YouTube ID abcdefghij. URL "
                               "https://www.youtube.com/watch?v=abcdefghij looks truncated."),
                              "unavailable", "invalid_id", "permanent", None),
    "invalid_id_unsupported": (("unsupported", None), "unavailable", "invalid_id", "permanent",
                               None),
    "unknown": (("expected", "Something entirely new went wrong"), "transient_failure",
                "unknown", "transient", None),
}
EXC_CLASS = {"geo_blocked_message": "GeoRestrictedError", "geo_blocked_default":
             "GeoRestrictedError", "invalid_id_unsupported": "UnsupportedError",
             "rate_limited_429": "HTTPError", "network_503": "HTTPError"}
CASE_ID = {name: f"tax{i:08d}" for i, name in enumerate(CASES)}   # neutral ids: no pattern text


def fill(entry: tuple, base: str, dead: int) -> tuple:
    action, arg, *rest = entry
    if isinstance(arg, str):
        arg = arg.format(base=base, dead=dead)
    return (action, arg, *rest)


@pytest.fixture
def fetcher(tmp_path):
    return Fetcher(small_params(attempts_per_run=1), videos_dir=tmp_path / "v", root=tmp_path,
                   extractors=(FakeYouTubeIE,))


@pytest.mark.parametrize("name", list(CASES))
def test_attempt_classifies_each_taxonomy_class(name, fetcher, server, tmp_path):
    entry, status, reason, kind, http_status = CASES[name]
    vid = CASE_ID[name]
    TABLE[vid] = fill(entry, *server)
    out = fetcher.attempt(vid, fake_url(vid))
    assert (out["status"], out["reason"], out["kind"]) == (status, reason, kind), out["message"]
    assert out["http_status"] == http_status
    if name in EXC_CLASS:
        assert out["exc_class"] == EXC_CLASS[name]
    assert out["message"].startswith("ERROR: ")
    assert out["ytdlp_version"] and out["path"] is None and out["sha256"] is None
    assert not list((tmp_path / "v").rglob("*.mp4"))


def test_transient_cases_never_unavailable():
    """The taxonomy itself: every throttled/transient case above is retried, never written off."""
    for name, (_, status, _, kind, _) in CASES.items():
        if kind in ("throttled", "transient", "configuration"):
            assert status in (PENDING, "transient_failure"), name


def test_attempt_available_through_fake(fetcher, server, mp4, tmp_path):
    vid = "okvideo0001"
    TABLE[vid] = ("media", f"{server[0]}/ok.mp4")
    out = fetcher.attempt(vid, fake_url(vid))
    assert out["status"] == "available", out["message"]
    assert out["path"] == "v/ok/okvideo0001.mp4"
    assert (tmp_path / out["path"]).read_bytes() == mp4.read_bytes()
    assert (out["width"], out["height"], out["vcodec"], out["acodec"], out["has_audio"]) == \
        (320, 240, "h264", "aac", True)
    assert out["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert out["reason"] is None and out["message"] is None


def test_format_unavailable_with_a_height_cap(tmp_path):
    """yt-dlp's own 'Requested format is not available' when the only format is too tall."""
    f = Fetcher(small_params(format="bv*[height<=?360]+ba/b[height<=?360]"), tmp_path / "v",
                tmp_path, extractors=(FakeYouTubeIE,))
    TABLE["tallonly001"] = ("formats", [{"format_id": "22", "url": "http://127.0.0.1:9/22.mp4",
                                         "ext": "mp4", "width": 1280, "height": 720,
                                         "vcodec": "avc1.64001F", "acodec": "mp4a.40.2"}])
    out = f.attempt("tallonly001", fake_url("tallonly001"))
    assert (out["status"], out["reason"], out["kind"]) == \
        ("transient_failure", "format_unavailable", "configuration")
    assert "requested format is not available" in out["message"].lower()


def test_extractor_classes_and_instances_are_usable(tmp_path):
    """Regression: yt-dlp re-resolves a bare class by name in its own registry (KeyError), so
    Fetcher must hand it instances."""
    TABLE["otherfake01"] = ("playability", "Private video. Sign in if you've been granted "
                                           "access to this video")
    for ie in (OtherFakeIE, OtherFakeIE()):
        f = Fetcher(small_params(), tmp_path / "v", tmp_path, extractors=(ie,))
        out = f.attempt("otherfake01", fake_url("otherfake01"))
        assert (out["status"], out["reason"]) == ("unavailable", "private"), out["message"]


# --------------------------------------------------------------------------- classify, by hand


def http_error(status: int, url: str = "https://www.youtube.com/youtubei/v1/player") -> HTTPError:
    return HTTPError(Response(io.BytesIO(b""), url, {}, status=status))


def as_ytdlp_raises(inner: BaseException, msg: str, video_id: str = "dQw4w9WgXcQ"):
    """inner as the cause of an ExtractorError inside a DownloadError, the way yt-dlp nests them."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise ExtractorError(msg, cause=e, video_id=video_id, ie="youtube")
    except ExtractorError as ee:
        return YtDownloadError(f"ERROR: {ee}", sys.exc_info())


@pytest.mark.parametrize("exc, reason", [
    (TransportError("Video unavailable: connection reset by peer"), "network"),
    (as_ytdlp_raises(TransportError("read timed out"), "Video unavailable. This video is "
                     "private"), "network"),
    (as_ytdlp_raises(http_error(503), "Private video: HTTP Error 503"), "network"),
    (as_ytdlp_raises(http_error(429), "This video has been removed by the uploader"),
     "rate_limited"),
    (IncompleteRead(100, 900), "network"),
    (ConnectionRefusedError(111, "Connection refused"), "network"),
    (TimeoutError("The read operation timed out"), "network"),
    (ExtractorError("Video unavailable. Sign in to confirm you\u2019re not a bot",
                    expected=True), "bot_check"),
])
def test_transient_classes_win_over_permanent_messages(exc, reason):
    out = classify(exc)
    assert out.reason == reason
    assert out.kind in ("transient", "throttled")
    assert out.status != UNAVAILABLE


def test_exception_class_and_http_status_are_recorded():
    out = classify(as_ytdlp_raises(http_error(429), "Unable to download API page"))
    assert (out.status, out.reason, out.kind, out.exc_class, out.http_status) == \
        ("pending", "rate_limited", "throttled", "HTTPError", 429)
    assert out.throttled
    out = classify(as_ytdlp_raises(http_error(404), "Unable to download webpage: HTTP Error 404"))
    assert (out.status, out.reason, out.http_status) == ("unavailable", "not_found", 404)
    assert not out.throttled


def test_transient_failures_never_unavailable():
    transient = [TransportError("Video unavailable"), IncompleteRead(1, 2),
                 as_ytdlp_raises(http_error(500), "This video is unavailable"),
                 as_ytdlp_raises(http_error(429), "Private video"),
                 ExtractorError("Cannot parse data", expected=False),
                 ExtractorError("something odd", expected=True),
                 ExtractorError(BOT, expected=True), ValueError("")]
    assert [classify(e).status for e in transient] == \
        ["transient_failure", "transient_failure", "transient_failure", "pending",
         "transient_failure", "transient_failure", "pending", "transient_failure"]


@pytest.mark.parametrize("msg", ["Private video", "Video unavailable",
                                 "This video has been removed by the uploader"])
def test_unexpected_extractor_error_is_broken_whatever_it_says(msg):
    """datasets.md: an ExtractorError yt-dlp did not expect is extractor_broken (transient),
    whatever its text says: a broken extractor must not write videos off."""
    out = classify(ExtractorError(msg, expected=False, video_id="dQw4w9WgXcQ", ie="youtube"))
    assert (out.status, out.reason, out.kind) == ("transient_failure", "extractor_broken",
                                                  "transient")


@pytest.mark.parametrize("msg, reason", [
    ("Sign in to confirm you\u2019re not a bot", "bot_check"),
    ("Sign in to confirm you\u2018re not a bot", "bot_check"),
    ("Sign in to confirm you\u02bcre not a bot", "bot_check"),
    ("You\u2019ve hit the request limit", "rate_limited"),
    ("This content isn\u2019t available, try again later.", "bot_check"),
    ("Removed for violating YouTube\u2019s Terms of Service", "policy_removed"),
    ("Private video. Sign in if you\u2019ve been granted access to this video", "private"),
    ("VIDEO   UNAVAILABLE", "unavailable_unspecified"),
])
def test_typographic_apostrophes_and_case_normalise(msg, reason):
    assert classify(ExtractorError(msg, expected=True)).reason == reason


def test_normalize():
    assert normalize("You\u2019ve \u201cHIT\u201d\n the\tLimit") == 'you\'ve "hit" the limit'


def test_unknown_message_is_unknown_and_retried():
    out = classify(ExtractorError("The frobnicator declined", expected=True))
    assert (out.status, out.reason, out.kind) == ("transient_failure", "unknown", "transient")
    out = classify(KeyError("x"))
    assert (out.status, out.reason) == ("transient_failure", "unknown")
    assert out.exc_class == "KeyError"


@pytest.mark.parametrize("exc", [
    PermissionError(13, "Permission denied", "/data/videos/ab"),
    OSError(28, "No space left on device"),
    YtDownloadError("ERROR: unable to open for writing: [Errno 13] Permission denied: 'x.part'"),
    YtDownloadError("ERROR: Unable to rename file: [Errno 30] Read-only file system"),
])
def test_errors_of_this_machine_are_local_not_unknown(exc):
    """A folder that cannot be written is not the network's or the video's fault (issue 18)."""
    out = classify(exc)
    assert (out.status, out.reason, out.kind) == ("transient_failure", "local_error", "local")


def test_name_resolution_and_empty_answers_stay_network():
    assert classify(TransportError(cause=socket.gaierror(-2, "Name or service not known"))
                    ).reason == "network"
    # an empty answer: YouTube's CDN does this now and then, so it is retried, not written off
    out = classify(YtDownloadError("ERROR: Did not get any data blocks"))
    assert (out.status, out.reason) == ("transient_failure", "network")


def test_class_decides_geo_and_unsupported():
    out = classify(GeoRestrictedError("The uploader has not made this video available in your "
                                      "country", countries=["US"]))
    assert (out.status, out.reason, out.kind) == ("unavailable", "geo_blocked", "regional")
    out = classify(UnsupportedError("https://example.com/x"))
    assert (out.status, out.reason, out.exc_class) == ("unavailable", "invalid_id",
                                                       "UnsupportedError")


def test_geo_class_beats_message():
    """Regression: the class decides first, so yt-dlp's default geo message ('...video is not
    available from your location...') is not unavailable_unspecified."""
    out = classify(GeoRestrictedError("This video is not available from your location due to "
                                      "geo restriction"))
    assert out.reason == "geo_blocked"


@pytest.mark.parametrize("vid", ["CaptchaXy01", "xTIMEOUTx01", "Private0001"])
def test_video_id_text_does_not_decide_the_reason(vid):
    """Regression: yt-dlp prefixes '[youtube] VIDEO_ID: '; an id that contains a pattern word
    ('captcha', 'timeout', case-insensitive) must not decide the reason."""
    ee = ExtractorError("Video unavailable", expected=True, video_id=vid, ie="youtube")
    err = YtDownloadError(f"ERROR: {ee}", (type(ee), ee, None))
    assert str(err) == f"ERROR: [youtube] {vid}: Video unavailable"
    assert classify(err).reason == "unavailable_unspecified"


def test_message_is_kept_and_truncated():
    out = classify(ExtractorError("Video unavailable " + "x" * 5000, expected=True))
    assert out.message.startswith("Video unavailable") and len(out.message) == 2000
    assert out.exc_class == "ExtractorError"
    assert set(REASONS) >= {"bot_check", "rate_limited", "network", "extractor_broken", "private",
                            "removed_by_uploader", "account_terminated", "copyright",
                            "policy_removed", "age_restricted", "members_only", "paid",
                            "geo_blocked", "not_yet_live", "unavailable_unspecified",
                            "format_unavailable", "invalid_id", "unknown"}


# --------------------------------------------------------------------------- circuit breaker unit


NET = ("network", "transient_failure", "transient")
BOTC = ("bot_check", "pending", "throttled")
OK = (None, "available", None)


def test_breaker_trips_on_failures_in_a_row_and_starts_over_when_the_site_answers():
    b = Breaker(threshold=3, window_s=10.0, cooldown_s=5.0)
    assert not b.attempt(100.0, 0, *NET) and not b.attempt(101.0, 0, *BOTC)
    assert not b.attempt(101.5, 0, *OK)                       # the site answered: afresh
    assert not b.attempt(102.0, 0, *NET)
    # this machine's failures and refused URLs say nothing about the network either way
    assert not b.attempt(102.5, 0, "local_error", "transient_failure", "local")
    assert not b.attempt(102.6, 0, "url_rejected", "transient_failure", "configuration")
    assert not b.attempt(103.0, 0, "forbidden", "transient_failure", "transient")
    assert b.attempt(104.0, 0, "rate_limited", "pending", "throttled")
    assert (b.phase, b.trips, b.last_reason) == ("probing", 1, "rate_limited")
    assert b.probe_due(104.0)
    assert not b.attempt(104.1, 0, *NET) and not b.hold(0)    # probing: nothing else counts
    # a permanent verdict on a video shows the site answered
    b2 = Breaker(threshold=2, window_s=10.0, cooldown_s=5.0)
    b2.attempt(0.0, 0, *NET)
    assert not b2.attempt(0.1, 0, "private", "unavailable", "permanent")
    assert not b2.attempt(0.2, 0, *NET) and b2.attempt(0.3, 0, *NET)


def test_breaker_counts_within_the_window_only():
    b = Breaker(threshold=3, window_s=10.0, cooldown_s=5.0)
    b.attempt(0.0, 0, *NET)
    b.attempt(5.0, 0, *NET)
    assert not b.attempt(10.5, 0, *NET)                        # 0.0 fell out of the window
    assert b.attempt(11.0, 0, *NET)


def test_breaker_probe_verdicts_resume_cool_stop():
    b = Breaker(threshold=1, window_s=1.0, cooldown_s=5.0)
    assert b.attempt(0.0, 0, *NET) and b.probe_due(0.0)
    assert b.probed(0.5, failed=False) == "resume" and (b.epoch, b.phase) == (1, "running")
    assert not b.attempt(0.6, 0, *NET)          # started before the answer: does not count
    assert b.attempt(0.7, 1, *NET)
    assert b.probed(1.0, failed=True) == "cool" and (b.phase, b.until) == ("cooling", 6.0)
    assert not b.probe_due(5.9) and b.probe_due(6.0)
    assert b.probed(6.1, failed=False) == "resume" and b.epoch == 2
    assert not b.hold(1)                        # a worker's hold from before the answer
    assert b.hold(2, "bot_check") and b.last_reason == "bot_check"   # a worker process trips it
    assert b.probed(7.0, failed=True) == "cool"
    assert b.probed(12.0, failed=True) == "stop" and (b.phase, b.trips) == ("stopped", 3)
    assert not b.attempt(13.0, 2, *NET) and not b.hold(2) and not b.probe_due(100.0)


def test_worker_process_holds_at_the_threshold_until_the_driver_answers():
    h = Hold(threshold=2, window_s=60.0)
    assert not h.note(0.0, 0, 0, failed=True, reached=False) and not h.held(0)
    assert h.note(1.0, 0, 0, failed=True, reached=False)      # holds: tell the driver, once
    assert h.held(0) and not h.note(1.1, 0, 0, failed=True, reached=False)
    assert not h.held(1)                                        # the driver answered: afresh
    assert not h.note(1.2, 0, 1, failed=True, reached=False)   # started before the answer
    assert not h.held(1)
    assert not h.note(2.0, 1, 1, failed=True, reached=False)
    assert not h.note(2.1, 1, 1, failed=False, reached=True)   # the site answered
    assert not h.note(2.2, 1, 1, failed=True, reached=False) and not h.held(1)
    assert not h.note(2.25, 1, 1, failed=False, reached=False)  # a local error: no change
    assert h.note(2.3, 1, 1, failed=True, reached=False) and h.held(1)


def test_stop_line_says_what_is_wrong_and_what_to_do():
    msg = ("ERROR: [generic] x: Unable to download webpage: HTTPConnection(host='127.0.0.1', "
           "port=1): Failed to establish a new connection: [Errno 111] Connection refused "
           "(caused by TransportError(\"...\"))")
    line = stop_line("network", 5, "okvideo0001", True, 900.0, msg)
    assert "\n" not in line and "caused by" not in line
    assert line.startswith("the network looks unreachable: 5 videos in a row failed (network)")
    assert "okvideo0001 (which downloaded before)" in line and "900 s pause" in line
    assert "Connection refused" in line and "download.proxy" in line and "re-run" in line
    line = stop_line("bot_check", 5, "nextvideo01", False, 60.0, "Sign in to confirm")
    assert "throttling or blocking this machine's IP" in line
    assert "nextvideo01 (the next listed video)" in line
    assert all(k in line for k in ("cookiefile", "max_videos_per_hour", "re-run later"))
    assert "HTTP 403" in stop_line("forbidden", 5, "x" * 11, True, 1.0, "HTTP Error 403")
    assert len(short("y" * 500)) == 123


class _Clock:
    """Stands in for the time module: wall time starts at t and moves by `tick` per reading and
    by each sleep; sleep, like time.sleep, refuses a negative duration."""

    def __init__(self, t, tick=0.0):
        self.t, self.tick, self.slept, self.mono = t, tick, [], 1000.0

    def time(self):
        now, self.t = self.t, self.t + self.tick
        return now

    def monotonic(self):
        self.mono += 1.0           # every state() call re-reads the Variable
        return self.mono

    def sleep(self, s):
        if s < 0:
            raise ValueError("sleep length must be non-negative")
        self.slept.append(s)
        self.t += s


def _control(state):
    from pipeline.download import runner as download
    c = download.Control.__new__(download.Control)  # no dask: only the pause logic is under test
    c.name = f"test-{id(c)}"
    download._STATE[c.name] = state                  # what the driver pushes to each worker
    return c


def test_worker_pause_sleeps_until_the_cool_down_ends(monkeypatch):
    import pipeline.download.runner
    clock = _Clock(100.0)
    monkeypatch.setattr(pipeline.download.runner, "time", clock)
    _control({"pause_until": 101.5}).wait_if_paused()
    assert sum(clock.slept) == pytest.approx(1.5) and max(clock.slept) <= 1.0
    clock = _Clock(100.0)
    monkeypatch.setattr(pipeline.download.runner, "time", clock)
    _control({"pause_until": 101.5, "stop": "disk full"}).wait_if_paused()   # stop beats pause
    assert clock.slept == []
    _control({"pause_until": 99.0}).wait_if_paused()                         # already over
    assert clock.slept == []


# regression: the cool-down ending between two clock readings gave time.sleep a negative
def test_worker_pause_survives_the_cool_down_ending_mid_check(monkeypatch):
    import pipeline.download.runner
    clock = _Clock(101.4999, tick=0.0002)   # the cool-down ends between two clock readings
    monkeypatch.setattr(pipeline.download.runner, "time", clock)
    _control({"pause_until": 101.5}).wait_if_paused()
    assert clock.t >= 101.5


# --------------------------------------------------------------------------- the orchestrator


CLUSTER = ClusterParams(workers=1, threads_per_worker=2, processes=False)


def manifest(ids) -> pa.Table:
    ids = list(ids)
    return pa.table({"video_id": ids, "url": [fake_url(v) for v in ids],
                     "split": ["train"] * len(ids), "duration_s": [2.0] * len(ids)})


def run(tmp_path, videos, p, **kw):
    events: list[dict] = []
    summary = download("fake", videos, p, CLUSTER, videos_dir=tmp_path / "videos",
                       ledger_dir=tmp_path / "ledger",
                       availability_path=tmp_path / "availability.parquet", root=tmp_path,
                       extractors=(FAKE_SPEC,), on_event=events.append, **kw)
    return summary, events


def state(tmp_path) -> dict[str, tuple]:
    t = read_availability(tmp_path / "availability.parquet")
    return {r["video_id"]: (r["status"], r["reason"], r["attempts"]) for r in t.to_pylist()}


def attempt_counts(tmp_path) -> dict[str, int]:
    return dict(collections.Counter(read_attempts(tmp_path / "ledger").column("video_id")
                                    .to_pylist()))


def test_download_rerun_and_recheck(server, tmp_path):
    base, dead = server
    TABLE.update({
        "okvideo0001": ("media", f"{base}/ok.mp4"),
        "privvid0001": ("playability", "Private video. Sign in if you've been granted access "
                                       "to this video"),
        "agevid00001": ("login", "Sign in to confirm your age. This video may be inappropriate "
                                 "for some users."),
        "botvid00001": ("playability", BOT),
        "netvid00001": ("api", f"http://127.0.0.1:{dead}/youtubei/v1/player"),
        "fmtvid00001": ("formats", STORYBOARD_ONLY),
        "backvid0001": ("playability", "Video unavailable"),
    })
    videos = manifest(TABLE)
    p = small_params()

    s1, ev1 = run(tmp_path, videos, p)
    assert state(tmp_path) == {
        "agevid00001": ("needs_auth", "age_restricted", 1),
        "backvid0001": ("unavailable", "unavailable_unspecified", 1),
        "botvid00001": ("pending", "bot_check", 2),
        "fmtvid00001": ("transient_failure", "format_unavailable", 1),
        "netvid00001": ("transient_failure", "network", 2),
        "okvideo0001": ("available", None, 1),
        "privvid0001": ("unavailable", "private", 1),
    }
    assert (s1["tried"], s1["checked"]) == (7, 0)
    assert s1["status"] == {"available": 1, "needs_auth": 1, "pending": 1,
                            "transient_failure": 2, "unavailable": 2}
    assert sum(1 for e in ev1 if e.get("kind") == "throttled") == 2
    ok = read_availability(tmp_path / "availability.parquet").to_pylist()
    ok = next(r for r in ok if r["video_id"] == "okvideo0001")
    assert ok["path"] == "videos/ok/okvideo0001.mp4" and (tmp_path / ok["path"]).is_file()
    assert (ok["width"], ok["height"], ok["has_audio"]) == (320, 240, True)
    assert ok["first_seen"] is not None and ok["last_checked"] >= ok["first_seen"]

    # a re-run tries only pending and transient videos again; the downloaded one is verified
    s2, ev2 = run(tmp_path, videos, p)
    assert attempt_counts(tmp_path) == {"agevid00001": 1, "backvid0001": 1, "botvid00001": 4,
                                        "fmtvid00001": 2, "netvid00001": 4, "okvideo0001": 1,
                                        "privvid0001": 1}
    assert (s2["tried"], s2["checked"]) == (3, 1)
    assert {e["video_id"] for e in ev2} == {"botvid00001", "fmtvid00001", "netvid00001",
                                            "okvideo0001"}
    assert [e["reason"] for e in ev2 if e["video_id"] == "okvideo0001"] == ["verified"]

    # the video comes back; only a re-check tries the permanent and needs_auth ones again
    TABLE["backvid0001"] = ("media", f"{base}/ok.mp4")
    s3, _ = run(tmp_path, videos, p, recheck=True)
    assert attempt_counts(tmp_path) == {"agevid00001": 2, "backvid0001": 2, "botvid00001": 6,
                                        "fmtvid00001": 3, "netvid00001": 6, "okvideo0001": 1,
                                        "privvid0001": 2}
    st = state(tmp_path)
    assert st["backvid0001"] == ("available", None, 2)
    assert st["privvid0001"] == ("unavailable", "private", 2)
    assert st["okvideo0001"] == ("available", None, 1)
    assert (s3["tried"], s3["checked"]) == (6, 1)
    assert (tmp_path / "videos" / "ba" / "backvid0001.mp4").is_file()
    assert len(list((tmp_path / "ledger" / "runs").glob("*.json"))) == 3


ONE_THREAD = ClusterParams(workers=1, threads_per_worker=1, processes=False)


def _messages(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_breaker_probe_gets_through_and_the_run_goes_on(server, tmp_path, caplog):
    """Failures in a row that are those videos' own (their host is down): the probe of the next
    listed video gets through, so the run goes on at once, without a pause."""
    caplog.set_level(logging.INFO)
    base, dead = server
    nets = [f"aanet00000{i}" for i in range(3)]      # sorted first: tried first
    goods = [f"zzgood0000{i}" for i in range(6)]
    for v in nets:
        TABLE[v] = ("api", f"http://127.0.0.1:{dead}/youtubei/v1/player")
    for v in goods:
        TABLE[v] = ("media", f"{base}/ok.mp4")
    p = small_params(attempts_per_run=1, breaker_threshold=3, breaker_cooldown_s=60.0)
    summary = download("fake", manifest(nets + goods), p, ONE_THREAD,
                       videos_dir=tmp_path / "videos", ledger_dir=tmp_path / "ledger",
                       availability_path=tmp_path / "availability.parquet", root=tmp_path,
                       extractors=(FAKE_SPEC,))
    assert summary["breaker_trips"] == 1 and summary["stopped"] is None
    through = _messages(caplog, "got through")
    assert len(through) == 1 and "zzgood00000" in through[0].getMessage()
    assert not _messages(caplog, "fails too")
    assert summary["status"] == {"available": 6, "transient_failure": 3}


def test_breaker_pauses_then_goes_on_when_the_network_is_back(server, tmp_path, caplog):
    """The network is down: failures in a row trip the breaker, the probe fails too, every
    worker pauses for the cool-down; the network comes back; the second probe gets through and
    the run goes on. No attempt starts while the workers are paused."""
    caplog.set_level(logging.INFO)
    base, dead = server
    ids = [f"flaky00000{i}" for i in range(10)]
    for v in ids:
        TABLE[v] = ("flaky", (f"http://127.0.0.1:{dead}/youtubei/v1/player", f"{base}/ok.mp4"))
    DOWN.set()

    class Back(logging.Handler):          # the network comes back during the cool-down
        def emit(self, record):
            if "fails too" in record.getMessage():
                DOWN.clear()

    back = Back()
    logging.getLogger("pipeline.download.runner").addHandler(back)
    try:
        p = small_params(attempts_per_run=1, breaker_threshold=3, breaker_cooldown_s=1.0)
        summary = download("fake", manifest(ids), p, ONE_THREAD,
                           videos_dir=tmp_path / "videos", ledger_dir=tmp_path / "ledger",
                           availability_path=tmp_path / "availability.parquet", root=tmp_path,
                           extractors=(FAKE_SPEC,))
    finally:
        logging.getLogger("pipeline.download.runner").removeHandler(back)
    assert summary["breaker_trips"] == 1 and summary["stopped"] is None
    (cool,) = _messages(caplog, "fails too")
    (resumed,) = _messages(caplog, "got through")
    assert "flaky000003" in cool.getMessage() and "network" in cool.getMessage()
    assert resumed.created - cool.created >= 1.0          # the whole cool-down
    st = state(tmp_path)
    assert [st[v][:2] for v in ids[:3]] == [("transient_failure", "network")] * 3
    assert all(st[v][0] == "available" for v in ids[3:])
    starts = [a["started_at"].timestamp() for a in read_attempts(tmp_path / "ledger")
              .to_pylist()]
    assert len(starts) == 10
    assert not [t for t in starts if cool.created < t < resumed.created], \
        "an attempt started while all workers were paused"


def test_breaker_stops_a_blocked_run_with_one_line(server, tmp_path, caplog):
    """Blocked (bot checks everywhere, the video that downloaded before included): the run
    stops after about `threshold` attempts, with one line saying what is wrong and what to do;
    what was downloaded before stays."""
    from pipeline.download.runner import DownloadError
    base, _ = server
    TABLE["aagood00001"] = ("media", f"{base}/ok.mp4")
    p = small_params(attempts_per_run=1, breaker_threshold=3, breaker_cooldown_s=0.2)
    kw = dict(videos_dir=tmp_path / "videos", ledger_dir=tmp_path / "ledger",
              availability_path=tmp_path / "availability.parquet", root=tmp_path,
              extractors=(FAKE_SPEC,))
    download("fake", manifest(["aagood00001"]), p, ONE_THREAD, **kw)
    good = (tmp_path / "videos" / "aa" / "aagood00001.mp4").read_bytes()
    bots = [f"bbbot{i:06d}" for i in range(40)]
    for v in ["aagood00001", *bots]:
        TABLE[v] = ("playability", BOT)
    caplog.set_level(logging.INFO)
    with pytest.raises(DownloadError) as e:
        download("fake", manifest(["aagood00001", *bots]), p, ONE_THREAD, **kw)
    line = str(e.value)
    assert "\n" not in line
    assert "throttling or blocking this machine's IP" in line
    assert "aagood00001 (which downloaded before)" in line and "0.2 s pause" in line
    assert all(k in line for k in ("cookiefile", "max_videos_per_hour", "re-run"))
    tried = attempt_counts(tmp_path)
    assert sum(tried.values()) - 1 <= 3 + 1                 # threshold (+1 in flight)
    st = state(tmp_path)
    assert st["aagood00001"][0] == "available"
    assert (tmp_path / "videos" / "aa" / "aagood00001.mp4").read_bytes() == good
    assert sum(1 for v in bots if st[v][0] == "pending" and st[v][2] == 0) >= 36
    stops = [json.loads(f.read_text())["stopped"] for f in (tmp_path / "ledger" / "runs")
             .glob("*.json")]
    assert len(stops) == 2 and stops.count(None) == 1       # the first run, then this one
    assert "throttling" in next(x for x in stops if x)


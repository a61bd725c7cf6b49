"""Typed params: params.yaml is loaded into frozen dataclasses that fail fast, naming the key."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

DATASETS = ("demo", "youcook2", "msrvtt", "crosstask", "howto100m")   # built-in kinds
OWN_KINDS = ("custom", "lsmdc")   # one's own media / a licensed dataset: any number, any name
KINDS = DATASETS + OWN_KINDS
# a dataset name: a folder, a DVC stage key and a file name at once
NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
# names that would collide with the reports' own folders
RESERVED_NAMES = {"curves": "reports/recall/curves", "status": "reports/availability/status"}
INT_MAX = 2**31 - 1   # no count, size or seed here needs more; 1e30 is a typo, not a setting


class ParamsError(ValueError):
    """A params file with an unknown key, a wrong type or an out-of-range value."""


def param(default: Any, doc: str, *, ge: float | None = None, le: float | None = None,
          gt: float | None = None) -> Any:
    """A dataclass field with a docstring and optional numeric bounds checked on load."""
    meta = {"doc": doc, "ge": ge, "le": le, "gt": gt}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _fail(key: str, msg: str) -> typing.NoReturn:
    raise ParamsError(f"{key}: {msg}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`; returns it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(key, "may not be null")
        for arg in args:
            if arg is type(None):
                continue
            return _coerce(value, arg, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            _fail(key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            _fail(key, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, f"expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, item_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, f"{key} key"): _coerce(v, item_tp, f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            _fail(key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value) or abs(value) > 1e15:
            _fail(key, f"expected a finite number of sane size, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, f"expected an integer, got {type(value).__name__} {value!r}")
        if abs(value) > INT_MAX:
            _fail(key, f"{value} is out of range (at most {INT_MAX})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(key, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported param type {tp!r} for {key}")  # programming error


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a mapping; unknown keys and bad values raise ParamsError."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for k in data:
        if k not in known:
            _fail(f"{prefix}.{k}".lstrip("."), f"unknown key (known keys: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        key = f"{prefix}.{name}".lstrip(".")
        if name not in data:
            continue
        value = _coerce(data[name], hints[name], key)
        for bound, ok in (("ge", lambda v, b: v >= b), ("le", lambda v, b: v <= b),
                          ("gt", lambda v, b: v > b)):
            b = f.metadata.get(bound)
            if b is not None and value is not None and not ok(value, b):
                sym = {"ge": ">=", "le": "<=", "gt": ">"}[bound]
                _fail(key, f"must be {sym} {b}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ParamsError as e:
        raise ParamsError(f"{prefix}.{e}".lstrip(".")) from None


def to_dict(obj: Any) -> Any:
    """The resolved params as plain YAML-able data, keyed as in params.yaml (own datasets'
    manifest entries under their names; fields set by the stages left out)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("internal"):
                if isinstance(value, dict):   # ManifestSection.own
                    out.update({k: to_dict(v) for k, v in value.items()})
                continue
            out[f.name] = to_dict(value)
        return out
    if isinstance(value := obj, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """The offline demo dataset generator (stage `demo`)."""

    seed: int = param(0, "RNG seed: the same seed gives the same annotations and media", ge=0)
    n_videos: int = param(40, "number of videos generated", ge=4, le=2000)
    n_val: int = param(12, "videos in the validation split (the rest are training)", ge=1)
    n_concepts: int = param(10, "distinct audio-visual concepts used (at most 12)", ge=2, le=12)
    # >= 5 s: a segment (3 s at least) needs its leading gap (2 s at least, see
    # pipeline/data/demo.py)
    min_duration_s: float = param(12.0, "shortest video, seconds", ge=5.0, le=600.0)
    max_duration_s: float = param(26.0, "longest video, seconds", ge=5.0, le=600.0)
    segments_per_video: int = param(5, "annotated concept segments per video (at most; as many "
                                    "as the video's length allows)", ge=1, le=20)
    frame_sizes: list[str] = param(["320x240", "480x360", "640x360"],
                                   "WIDTHxHEIGHT choices, one drawn per video")
    fps: int = param(30, "video frame rate, frames per second", ge=1, le=120)
    speech: bool = param(True, "speak each concept's name with espeak-ng over its sound")
    spoken_fraction: float = param(
        0.8, "share of the segments whose name is spoken (with speech: true); the others carry "
             "their sound only, like clips without narration (the Sounds subsets of stage "
             "speech@demo). Drawn per segment, seeded", ge=0.0, le=1.0)
    speech_only_fraction: float = param(
        0.5, "share of the segments narrated without their sound (at most spoken_fraction): "
              "the name alone must then tell the concept, as in spoken search", ge=0.0, le=1.0)
    noise_level: float = param(0.0, "background noise amplitude (full scale = 1); 0: silence "
                                    "between the sounds and names. A video-wide noise band "
                                    "let the model match clips by their background and not "
                                    "learn the spoken names", ge=0.0, le=1.0)
    workers: int = param(2, "parallel ffmpeg encoders", ge=1, le=64)

    def __post_init__(self) -> None:
        if self.min_duration_s > self.max_duration_s:
            _fail("min_duration_s", f"must be <= max_duration_s ({self.max_duration_s})")
        if self.n_val >= self.n_videos:
            _fail("n_val", f"must be < n_videos ({self.n_videos})")
        if self.speech_only_fraction > self.spoken_fraction:
            _fail("speech_only_fraction", f"must be <= spoken_fraction ({self.spoken_fraction})")
        for i, s in enumerate(self.frame_sizes):
            w, _, h = s.partition("x")
            if not (w.isdigit() and h.isdigit() and 64 <= int(w) <= 3840 and 64 <= int(h) <= 2160
                    and int(w) % 2 == 0 and int(h) % 2 == 0):
                _fail(f"frame_sizes[{i}]", f"expected even WIDTHxHEIGHT within 64..3840 x "
                      f"64..2160, got {s!r}")
        if not self.frame_sizes:
            _fail("frame_sizes", "needs at least one size")


@dataclasses.dataclass(frozen=True)
class SourceParams:
    """Where a dataset's official annotation files come from (stage `manifest@<ds>`)."""

    source_dir: str | None = param(None, "a local folder holding the official files: `avl "
                                         "sources <dataset>` copies them from there into "
                                         "data/sources/<dataset>; null: it downloads them")
    download: bool = param(True, "`avl sources <dataset>` downloads missing official files "
                                 "from the pinned URLs (the stage itself never downloads)")


@dataclasses.dataclass(frozen=True)
class DemoManifestParams(SourceParams):
    """Manifest of the generated demo (its source.yaml is written by stage `demo`)."""


@dataclasses.dataclass(frozen=True)
class YouCook2ManifestParams(SourceParams):
    """YouCook2 train/val segments."""


@dataclasses.dataclass(frozen=True)
class MsrvttManifestParams(SourceParams):
    """MSR-VTT clips and the JSFusion split lists."""

    splits: list[Literal["train_7k", "train_9k", "test_1k_a"]] = param(
        ["train_7k", "train_9k", "test_1k_a"], "split lists to include")


@dataclasses.dataclass(frozen=True)
class CrossTaskManifestParams(SourceParams):
    """CrossTask primary/related tasks and step annotations."""

    include_related: bool = param(True, "include the related-task videos (training only)")


@dataclasses.dataclass(frozen=True)
class HowTo100MManifestParams(SourceParams):
    """HowTo100M video listing, optionally with ASR caption clips."""

    captions: bool = param(False, "also read caption.json into manifest clips (large: ~136 M "
                                  "rows, read whole); text pretraining does not need this: it "
                                  "streams caption.json through stage captions@ (text.captions)")


MEDIA_EXTENSIONS = ["mp4", "mkv", "webm", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "mts",
                    "m2ts", "flv", "wmv", "3gp", "ogv", "mxf", "vob", "divx"]


@dataclasses.dataclass(frozen=True)
class CustomManifestParams:
    """One's own media (kind `custom`): a folder and/or a list of URLs or paths, with optional
    clip annotations. Relative paths are inside data/sources/<name>/ (the stage's DVC dep)."""

    media: str | None = param("media", "folder of media files, searched recursively (any "
                                       "container ffmpeg reads); null: none")
    media_list: str | None = param(None, "CSV or JSONL of media: a `url` (any site yt-dlp "
                                   "supports, or file:) or `path` column; optional `id`, "
                                   "`split`, `title`")
    annotations: str | None = param(None, "clip annotations: CSV/JSONL with video (id, path, "
                                          "file name or url), start, end, text, split; or "
                                          "a YouCook2-format JSON. null: one clip per video, "
                                          "the whole video")
    extensions: list[str] = param(MEDIA_EXTENSIONS, "file name endings taken from `media` "
                                                    "(case-insensitive); [] takes every file")
    split: str = param("test", "split of videos and clips that name none")

    def __post_init__(self) -> None:
        if self.media is None and self.media_list is None:
            _fail("media", "set `media` (a folder) or `media_list` (a CSV/JSONL of URLs or "
                           "paths)")
        if not NAME.match(self.split):
            _fail("split", f"{self.split!r} is not a plain name (a-z, 0-9, _ and -)")


@dataclasses.dataclass(frozen=True)
class LsmdcManifestParams:
    """LSMDC (kind `lsmdc`, licensed: the clips are local files). Relative paths are inside
    data/sources/<name>/."""

    media: str = param("media", "folder of the clips (<movie>/<clip_id>.avi as distributed; "
                                "searched recursively, any container)")
    annotations: dict[str, str] = param(
        {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
         "test": "LSMDC16_challenge_1000_publictect.csv"},
        "split -> the official tab-separated annotation file (clip id, aligned start/end, "
        "extracted start/end, sentence)")

    def __post_init__(self) -> None:
        if not self.annotations:
            _fail("annotations", "name at least one split's annotation file")
        for split in self.annotations:
            if not NAME.match(split):
                _fail("annotations", f"{split!r} is not a plain split name")


OWN_PARAMS = {"custom": CustomManifestParams, "lsmdc": LsmdcManifestParams}


@dataclasses.dataclass(frozen=True)
class ManifestSection:
    """One entry per dataset; each manifest@<ds> stage reads only its own. Entries of custom
    and lsmdc datasets are keyed by the dataset's name (parsed into `own`)."""

    demo: DemoManifestParams = param(DemoManifestParams(), "demo")
    youcook2: YouCook2ManifestParams = param(YouCook2ManifestParams(), "YouCook2")
    msrvtt: MsrvttManifestParams = param(MsrvttManifestParams(), "MSR-VTT")
    crosstask: CrossTaskManifestParams = param(CrossTaskManifestParams(), "CrossTask")
    howto100m: HowTo100MManifestParams = param(HowTo100MManifestParams(), "HowTo100M")
    own: dict = dataclasses.field(default_factory=dict, metadata={
        "doc": "custom and lsmdc datasets' entries by name", "internal": True})

    def of(self, name: str) -> Any:
        """The entry of dataset `name` (built-in or own)."""
        return self.own[name] if name in self.own else getattr(self, name)


@dataclasses.dataclass(frozen=True)
class ClusterParams:
    """Where download and extraction run: a dask LocalCluster, or an existing cluster."""

    scheduler_address: str | None = param(None, "tcp://host:port of a running dask scheduler; "
                                                "null starts a LocalCluster on this machine")
    workers: int = param(2, "LocalCluster worker processes", ge=1, le=1024)
    threads_per_worker: int = param(4, "threads per worker: concurrent downloads per process",
                                    ge=1, le=256)
    processes: bool = param(True, "LocalCluster workers as processes (false: threads in this "
                                  "process, for debugging)")

    def __post_init__(self) -> None:
        a = self.scheduler_address
        if a is not None and not (
                re.fullmatch(r"(tcp|tls|ucx|ws|wss)://\[?[\w.:-]+\]?:\d{1,5}", a)
                or re.fullmatch(r"inproc://\S+", a)):   # inproc: a cluster in this process
            _fail("scheduler_address", f"expected tcp://HOST:PORT (or tls://...), got {a!r}")


DEFAULT_FORMAT = "bv*[height>=?360]+ba/b[height>=?360]/bv*+ba/b"


@dataclasses.dataclass(frozen=True)
class DownloadParams:
    """Stage download@<ds>: yt-dlp settings, pacing, resume and safety (datasets.md)."""

    format: str = param(DEFAULT_FORMAT, "yt-dlp format selector: video with audio, >= 360p "
                                        "where available ([height>=?360] keeps unknown heights)")
    format_sort: list[str] = param(["+size", "+br", "+res", "+fps"],
                                   "yt-dlp format_sort: smallest matching file first")
    merge_output_format: str = param("mp4/mkv", "container when video and audio are merged")
    retries: int = param(5, "yt-dlp HTTP retries per request (the API's default is 0)", ge=0,
                         le=100)
    fragment_retries: int = param(5, "yt-dlp retries per fragment (DASH/HLS)", ge=0, le=100)
    extractor_retries: int = param(2, "yt-dlp retries of the extractor's page requests", ge=0,
                                   le=100)
    socket_timeout_s: float = param(30.0, "network read timeout, seconds", gt=0)
    attempts_per_run: int = param(3, "tries per video per run on transient failures", ge=1,
                                  le=20)
    backoff_s: float = param(2.0, "first wait between tries, doubled each time, +-50% jitter",
                             ge=0)
    max_backoff_s: float = param(300.0, "longest wait between tries, seconds", ge=0)
    sleep_interval_s: float = param(0.0, "yt-dlp sleep before each download, seconds "
                                         "(random up to max_sleep_interval_s when that is set)",
                                    ge=0)
    max_sleep_interval_s: float = param(0.0, "upper end of the random sleep, seconds", ge=0)
    sleep_requests_s: float = param(0.0, "yt-dlp sleep between extraction requests, seconds",
                                    ge=0)
    max_videos_per_hour: float = param(0.0, "pace all workers together to at most this many "
                                            "videos per hour (YouTube allows ~300 anonymous); "
                                            "0 = no pacing", ge=0)
    ratelimit_bytes_s: int = param(0, "per-download bandwidth cap, bytes/s; 0 = none", ge=0)
    cookiefile: str | None = param(None, "Netscape cookies.txt for age/member/bot-checked "
                                         "videos (keep it out of git)")
    proxy: str | None = param(None, "proxy URL, e.g. socks5://127.0.0.1:1080")
    file_root: str | None = param("data/demo", "the only folder file: URLs may point into (the "
                                               "demo's); null refuses all file: URLs")
    shard_size: int = param(500, "most videos per shard (the unit of work and of ledger files); "
                                 "smaller when needed to give every worker thread 4 shards",
                            ge=1, le=100_000)
    recheck_unavailable: bool = param(False, "also re-try videos recorded as unavailable or "
                                             "needs_auth (videos do come back)")
    verify: Literal["sha256", "size"] = param("sha256", "how re-runs check downloaded files: "
                                                        "full sha256, or size only (fast)")
    min_free_gb: float = param(2.0, "stop cleanly when free space under the videos folder "
                                    "falls below this, GB", ge=0)
    est_mb_per_minute: float = param(12.0, "disk estimate per minute of video when no file "
                                           "has been downloaded yet, MB", gt=0)
    breaker_threshold: int = param(5, "network/throttling failures in a row (connection "
                                      "refused/reset, DNS, timeouts, HTTP 5xx/429/403, bot "
                                      "checks; within breaker_window_s) that trip the circuit "
                                      "breaker: all workers pause, one known-good video is "
                                      "probed, and the run stops cleanly when it keeps failing",
                                   ge=1, le=10_000)
    breaker_window_s: float = param(300.0, "the failures in a row count only within this long, "
                                           "seconds", gt=0)
    breaker_cooldown_s: float = param(900.0, "pause between the breaker's first probe and the "
                                             "second (the run stops if that fails too), "
                                             "seconds", ge=0)
    max_transient_fraction: float = param(0.5, "fail the stage when more than this fraction "
                                               "of tried videos ends in a transient failure",
                                          ge=0, le=1)
    lock_wait_s: float = param(0.0, "when another run writes this dataset's ledger: wait up to "
                                    "this long for it, seconds, then stop naming it", ge=0)
    max_videos: int = param(0, "download a sample: the first N videos by video_id (after the "
                               "`splits` filter; YouTube ids are random, so a fair sample that "
                               "a larger N extends), per dataset; 0 = all", ge=0, le=INT_MAX)
    splits: list[str] = param([], "download only videos of these splits (a video in several "
                                  "splits is taken when any is listed); [] = all")
    # set by the stage for own media (not a params.yaml key): file: URLs under this folder are
    # referenced where they are (probed and hashed, never copied)
    reference_root: str | None = dataclasses.field(default=None, metadata={
        "doc": "own media's folder, referenced in place", "internal": True})

    def __post_init__(self) -> None:
        for i, split in enumerate(self.splits):
            if not split or "," in split or split != split.strip():
                _fail(f"splits[{i}]", f"{split!r} is not a split name")
        if self.max_sleep_interval_s and self.max_sleep_interval_s < self.sleep_interval_s:
            _fail("max_sleep_interval_s", f"must be >= sleep_interval_s ({self.sleep_interval_s})")
        if self.proxy is not None and "://" not in self.proxy:
            _fail("proxy", f"expected a URL like socks5://host:port, got {self.proxy!r}")


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    """Stage extract@<dataset>: frozen 2D/3D features and log-Mel spectrograms (features.md)."""

    weights_2d: str = param("imagenet", "ResNet-152 weights: imagenet (torchvision "
                                        "IMAGENET1K_V1), a .pth path, or random[:SEED]")
    weights_3d: str = param("kinetics", "ResNeXt-101 weights: kinetics (Hara's Kinetics-400 "
                                        "file), a .pth path, or random[:SEED]")
    demo_weights: str = param("random", "weights for BOTH backbones on the offline demos "
                                        "(demo and the demo_language datasets: no internet "
                                        "there); 'official' uses weights_2d / weights_3d "
                                        "like every other dataset")
    weights_dir: str = param("data/weights", "folder the official weight files are looked up "
                                             "in (and downloaded to, when online)")
    download_weights: bool = param(True, "download a missing torchvision file when online")
    format: Literal["hdf5", "parquet"] = param("hdf5", "store format: sharded HDF5 (windows "
                                                       "read without loading a video) or Parquet "
                                                       "(interchange; one row per video)")
    dtype: Literal["float16", "float32"] = param("float16", "stored dtype of the features "
                                                            "(reference: float16)")
    l2_normalize: bool = param(True, "L2-normalise every 2D/3D row, eps 1e-12 (reference: yes)")
    batch_2d: int = param(0, "1 fps frames per ResNet-152 forward, across videos; 0 = auto "
                             "(8 on CPU, where small batches stay in cache, 32 on a GPU)", ge=0,
                          le=4096)
    batch_3d: int = param(0, "16-frame clips per ResNeXt-101 forward, across videos; 0 = auto "
                             "(4 on CPU, 8 on a GPU)", ge=0, le=1024)
    decoders: int = param(0, "videos decoded concurrently per worker (one ffmpeg each) ahead of "
                             "inference; 0 = auto (1 on CPU, 6 on a GPU)", ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "auto: CUDA when present (one worker "
                                                           "per GPU), else the CPU")
    workers: int = param(0, "LocalCluster worker processes for extraction (each loads both "
                            "models); 0 = auto: one per GPU, else 1 using every core", ge=0)
    precision: Literal["float32", "bf16", "fp16"] = param("float32", "autocast for the "
                                                                    "forwards; float32 is the "
                                                                    "reference recipe")
    channels_last: bool = param(True, "channels-last memory format (same numbers, faster)")
    shard_videos: int = param(64, "most videos per shard (the unit of work and restart)", ge=1,
                              le=100_000)
    shard_seconds: float = param(36000.0, "most seconds of video per shard", gt=0)
    max_failure_fraction: float = param(0.2, "fail the stage when more than this fraction of "
                                             "downloaded videos ends in decode_error, "
                                             "probe_error or truncated", ge=0, le=1)
    verify: Literal["sha256", "size"] = param("sha256", "how each run checks the finished shards "
                                                        "before trusting them: full sha256 "
                                                        "against the recorded one, or size only "
                                                        "(fast, for very large stores)")
    min_free_gb: float = param(2.0, "stop cleanly, before and during extraction, when free "
                                    "space under the store falls below this, GB", ge=0)
    max_av_mismatch_s: float = param(2.0, "flag av_length_mismatch when the decoded video and "
                                          "audio lengths differ by more than this, seconds",
                                     gt=0)
    allow_empty: bool = param(False, "succeed when the ledger has no downloaded video to "
                                     "extract (false: that is an error, usually a failed "
                                     "download)")
    lock_wait_s: float = param(0.0, "when another run writes this store: wait up to this long "
                                    "for it, seconds, then stop naming it", ge=0)
    threads: int = param(0, "torch CPU threads per extraction worker; 0 = the machine's cores "
                            "shared among the workers. Float rounding depends on the thread "
                            "count: pin it for features identical across machines", ge=0,
                         le=1024)
    demo_threads: int = param(2, "threads on the offline demo dataset instead of `threads`: "
                                 "pinned, so the demo's features (and numbers) are the same on "
                                 "any machine", ge=0, le=1024)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """The model and loss (avlnet.md); the paper's Table 3 ablations are these values. `arch`
    picks the model family (extensions.md §1-2): AVLnet, AVLnet-Text Tri or Fused, MMV FAC."""

    arch: Literal["avlnet", "avlnet_text_tri", "avlnet_text_fused", "mmv_fac"] = param(
        "avlnet", "avlnet (audio-video; the loss below), avlnet_text_tri (D 6144 released), "
                  "avlnet_text_fused (D 4096 released), mmv_fac (MMV's fine-and-coarse heads); "
                  "the text archs train on caption clips (stage train_text)")
    embed_dim: int = param(4096, "joint embedding size D (paper: 4096)", ge=1, le=65536)
    head: Literal["gating", "linear", "mlp"] = param("gating", "projection heads (Table 3)")
    audio_widths: list[int] = param([128, 256, 512, 1024], "ResDAVEnet stage widths (paper: "
                                                           "128, 256, 512, 1024)")
    loss: Literal["mms", "infonce", "max_margin", "bce", "milnce"] = param(
        "mms", "training loss (Table 3)")
    mms_margin: float = param(0.001, "MMS margin delta (paper: 0.001)", ge=0)
    ranking_margin: float = param(0.1, "max-margin ranking loss margin m", ge=0)
    temperature: float = param(0.1, "InfoNCE temperature", gt=0)
    video_norm: Literal["none", "batchnorm"] = param(
        "none", "standardise the video input before its head (paper: none; the offline "
        "demo's random-backbone features need batchnorm, see models/avlnet.py)")
    visual: Literal["2d3d", "2d", "3d"] = param(
        "2d3d", "visual features the video branch takes: 2d3d = [2D || 3D] 4096-d (paper), 2d = "
        "ResNet-152 only, 3d = ResNeXt-101 only, 2048-d each (Table 3 '2D only'; 2d is the "
        "start for images). Recorded in checkpoints: evaluation, fine-tuning and search use "
        "the checkpoint's")
    word_dim: int = param(300, "word vector size of the text branch (GoogleNews: 300)", ge=1,
                          le=4096)
    mmv_va_dim: int = param(512, "mmv_fac: fine (video-audio) space size", ge=1, le=65536)
    mmv_vat_dim: int = param(256, "mmv_fac: coarse (video-audio-text) space size", ge=1,
                             le=65536)
    mmv_temperature: float = param(0.07, "mmv_fac: NCE and MIL-NCE temperature", gt=0)
    mmv_lambda_va: float = param(1.0, "mmv_fac: weight of the video-audio NCE", ge=0)
    mmv_lambda_vt: float = param(10.0, "mmv_fac: weight of the video-text MIL-NCE", ge=0)

    def __post_init__(self) -> None:
        if self.arch == "avlnet_text_fused" and self.embed_dim % 2:
            _fail("embed_dim", f"avlnet_text_fused needs an even embed_dim (audio and text get "
                               f"half each), got {self.embed_dim}")
        if self.arch != "avlnet" and self.head != "gating":
            _fail("head", f"{self.arch} has its own heads; leave head: gating")
        if self.arch != "avlnet" and self.loss != "mms":
            _fail("loss", f"{self.arch} has its own objective (models/objectives.py); leave "
                          "loss: mms")
        if (len(self.audio_widths) != 4 or min(self.audio_widths) < 1
                or max(self.audio_widths) > 16384):
            _fail("audio_widths", f"expected 4 widths within 1..16384, got {self.audio_widths}")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Stage train (pretraining on random 10 s windows) and the training loop both stages use."""

    dataset: str = param("demo", "pretraining data, by name in `datasets` (howto100m for the "
                                 "paper; any dataset with features works)")
    model: ModelParams = param(ModelParams(), "model and loss")
    epochs: int = param(30, "epochs (paper: 30)", ge=1, le=100_000)
    videos_per_batch: int = param(128, "N videos per batch (paper: 128)", ge=1, le=65536)
    clips_per_video: int = param(32, "M random windows per video (paper: 32)", ge=1, le=4096)
    window_s: int = param(10, "length of a pretraining window, whole seconds (paper: 10; its "
                              "Table 3 ablates 2.5 to 20)", ge=1, le=60)
    lr: float = param(1e-3, "Adam learning rate (paper: 1e-3)", gt=0)
    lr_decay: float = param(0.9, "lr multiplied by this after every epoch (paper: 0.9)", gt=0,
                            le=1)
    seed: int = param(0, "seeds data order, windows and initialisation")
    fraction: float = param(1.0, "share of the usable train videos pretrained on (the data-scale "
                                 "study, thesis Fig. 5-3): round(fraction x n), at least 1, "
                                 "chosen by a seeded hash of the video id, so a larger "
                                 "fraction keeps the smaller one's videos", gt=0, le=1)
    workers: int = param(2, "data loader worker processes", ge=0, le=256)
    precision: Literal["auto", "float32", "bf16", "fp16"] = param(
        "auto", "auto: bf16 autocast on CUDA, float32 on the CPU")
    checkpoint_every: int = param(200, "steps between checkpoints (also at every epoch end)",
                                  ge=1)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "CUDA when present, else the CPU")
    verify: Literal["sha256", "size"] = param("sha256", "how training (and fine-tuning) checks "
                                                        "the feature shards before reading them")
    min_free_gb: float = param(2.0, "stop cleanly before a checkpoint would take the free space "
                                    "under the run folder below this, GB", ge=0)
    threads: int = param(0, "torch CPU threads of the training process (train and finetune); "
                            "0 = torch's default (the machine's cores). Float rounding depends "
                            "on the thread count: pin it for runs identical across machines",
                         ge=0, le=1024)
    caption_min_s: float = param(8.0, "text archs: captions are merged with their neighbours "
                                      "until a clip lasts this long, s (Tri 8, Fused 10)",
                                 ge=0, le=3600)
    caption_frames: int = param(800, "text archs: audio frames per caption clip, padded or "
                                     "cropped (Tri 800, Fused 1000)", ge=16, le=1_000_000)


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    """Stage finetune@<dataset>: the pretrained model on the dataset's annotated train clips."""

    datasets: list[str] = param(["demo"], "datasets fine-tuned, by name (each needs its "
                                          "features and annotated train clips)")
    init: Literal["pretrained", "none"] = param("pretrained", "start from stage train's model, "
                                                              "or from scratch (the paper's "
                                                              "'target only' rows)")
    batch: int = param(256, "clips per batch (paper: 256; from scratch 64)", ge=1, le=65536)
    lr: float = param(1e-4, "Adam learning rate, constant (paper: 1e-4)", gt=0)
    epochs: int = param(5, "epochs (paper: 5; from scratch 15)", ge=1, le=100_000)
    bn_mode: Literal["frozen", "train"] = param("frozen", "frozen: BatchNorm statistics "
                                                          "frozen and masked pooling, as the "
                                                          "reference fine-tunes; train: usual "
                                                          "training mode")
    clip_frames: int = param(0, "audio frames per clip, padded or cropped; 0 = the dataset's "
                                "(5120 YouCook2/CrossTask, 3072 MSR-VTT, 512 demo; own media: "
                                "the longest clip, rounded up to 256, at most 5120); "
                                "evaluation uses the same", ge=0, le=1_000_000)


@dataclasses.dataclass(frozen=True)
class TextFinetuneParams(FinetuneParams):
    """Stage finetune_text@<dataset>: a text model on the dataset's annotated clips and their
    captions (Tri: MMS(T (A+V)); Fused: MMS(AT V))."""

    init: Literal["pretrained", "audio_video", "none"] = param(
        "pretrained", "pretrained: stage train_text's model; audio_video: stage train's "
                      "audio-video AVLnet with the text branch added here (the thesis's "
                      "low-resource setting, Table 4.2); none: from scratch")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Stage evaluate@<dataset>: recall tables of each setting's checkpoint."""

    datasets: list[str] = param(["demo"], "datasets evaluated, by name (each needs its "
                                          "features)")
    settings: list[Literal["zero_shot", "fine_tuned"]] = param(
        ["zero_shot", "fine_tuned"], "zero_shot: stage train's model; fine_tuned: "
                                     "finetune@<dataset>'s (see allow_missing)")
    batch: int = param(64, "clips embedded per forward", ge=1, le=65536)
    examples: int = param(5, "queries shown in the qualitative page", ge=0, le=1000)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "CUDA when present, else the CPU")
    allow_missing: bool = param(False, "skip a setting whose checkpoint is missing with a "
                                       "warning (false: that is an error)")
    verify: Literal["sha256", "size"] = param("sha256", "how evaluation checks the feature "
                                                        "shards before reading them")
    checkpoints: dict[str, str] = param(
        {}, "more settings, each one checkpoint file: setting name -> path from the project "
            "root (e.g. released: data/models/released/AVLnet_release.pth). Our checkpoints "
            "and bare state_dicts (the authors' release) alike: a file without a recorded "
            "config has it inferred from its shapes. Under data/models/ DVC tracks the file's "
            "content; elsewhere only its path (this param)")

    def __post_init__(self) -> None:
        if not self.settings and not self.checkpoints:
            _fail("settings", "nothing to evaluate: settings is empty and checkpoints names no "
                              "file; list a setting or add a checkpoint")
        for name, path in self.checkpoints.items():
            if not NAME.match(name):
                _fail(f"checkpoints.{name}", "not a usable setting name (a-z, 0-9, _ and -, "
                                             "at most 64, starting with a letter or digit)")
            if name in ("zero_shot", "fine_tuned", "target_only"):
                _fail(f"checkpoints.{name}", "a built-in setting's name (listed in settings); "
                                             "choose another, e.g. released")
            if not path.strip():
                _fail(f"checkpoints.{name}", "an empty path; give the checkpoint file")


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Spoken-query search: stage index@<dataset> (the index), stage spoken@<dataset> (the
    spoken-concept check) and `avl search` (queries)."""

    datasets: list[str] = param([], "datasets indexed (index@, spoken@), by name (each needs "
                                    "its features and the checkpoint; the shipped params.yaml: "
                                    "demo)")
    setting: str = param("fine_tuned", "checkpoint embedded: zero_shot (<models>/pretrain/"
                                       "final.pt), fine_tuned (<models>/finetune-<dataset>/"
                                       "final.pt) or a file from the project root; <models> is "
                                       "stage index's --models (data/models; data/text-models "
                                       "for a text model, which adds --text queries)")
    units: Literal["clips", "windows"] = param("clips", "items indexed: the annotated clips, or "
                                                        "sliding windows over every video")
    splits: list[str] = param([], "splits whose clips (windows: videos) are indexed; empty: all")
    window_s: float = param(5.0, "windows: length, seconds", gt=0, le=3600)
    hop_s: float = param(2.5, "windows: step between window starts, seconds", gt=0, le=3600)
    batch: int = param(64, "items embedded per forward", ge=1, le=65536)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "CUDA when present, else the CPU")
    verify: Literal["sha256", "size"] = param("sha256", "how the feature shards are checked "
                                                        "before reading them")
    ann: Literal["auto", "exact", "ivf"] = param("auto", "vector index: exact (faiss flat), ivf "
                                                         "(approximate), auto: exact up to "
                                                         "exact_max items")
    exact_max: int = param(50_000, "most items an auto index searches exactly", ge=1,
                           le=INT_MAX)
    seed: int = param(0, "seed of the ivf index's k-means and calibration", ge=0, le=INT_MAX)
    threads: int = param(0, "faiss threads while building; 0 = faiss's default", ge=0, le=1024)
    top: int = param(10, "results per query of spoken@ (its page and first-hit rank)", ge=1,
                     le=1000)
    query_min_s: float = param(2.0, "an audio query shorter than this is trimmed of its "
                                    "leading and trailing silence and centred in this many "
                                    "seconds of silence, as speech sits between pauses in the "
                                    "clips the model learnt from; 0: as recorded", ge=0.0,
                               le=60.0)
    voice: str = param("en-gb", "espeak-ng voice of spoken@'s queries; the demo's videos speak "
                                "en-us voices, so another accent tests unseen speech")
    speed: int = param(160, "espeak-ng words per minute of spoken@'s queries", ge=80, le=450)
    words: list[str] = param([], "words spoken@ checks; empty: the demo's concept names "
                                 "(pipeline/data/demo.py CONCEPTS[:demo.n_concepts])")

    def __post_init__(self) -> None:
        if self.hop_s > self.window_s:
            _fail("hop_s", f"{self.hop_s} s is longer than window_s ({self.window_s} s): the "
                           "windows would leave gaps; make hop_s <= window_s")
        if not self.voice.strip():
            _fail("voice", "empty; give an espeak-ng voice (espeak-ng --voices lists them)")
        for w in self.words:
            if not w.strip():
                _fail("words", "holds an empty word")


@dataclasses.dataclass(frozen=True)
class TextParams:
    """AVLnet-Text (extensions.md §1): word vectors, ASR captions, and the text model's train,
    finetune and evaluate settings (stages captions@, train_text, finetune_text@,
    evaluate_text@)."""

    word_vectors: str = param("data/weights/GoogleNews-vectors-negative300.bin",
                              "word2vec file (binary or text format; GoogleNews 300-d for the "
                              "paper), from the project root; cached memory-mappable in "
                              "cache_dir on first use")
    cache_dir: str = param("data/weights", "where the word vectors' cache is written")
    max_words: int = param(20, "words per caption after dropping unknown ones (paper: 20)",
                           ge=1, le=1000)
    captions: list[str] = param([], "datasets whose ASR captions (data/sources/<name>/"
                                    "caption.json) stage captions@<name> ingests")
    train: TrainParams = param(TrainParams(dataset="howto100m", model=ModelParams(
        arch="avlnet_text_tri", embed_dim=6144), epochs=15, videos_per_batch=256,
        lr=2.5e-4), "pretraining on caption clips (paper Tri: 15 epochs, 256 x 32, lr 2.5e-4, "
                    "decay 0.9)")
    finetune: TextFinetuneParams = param(TextFinetuneParams(datasets=[]),
                                         "fine-tuning with captions")
    evaluate: EvaluateParams = param(EvaluateParams(datasets=[]), "text retrieval reports")


@dataclasses.dataclass(frozen=True)
class SpeechParams:
    """Stage speech@<dataset> (which clips carry speech; the Sounds-N / Speech-N sets) and
    speech_recall@<dataset> (their recall tables, AVLnet Table 4)."""

    datasets: list[str] = param([], "datasets analysed, by name (each needs its downloaded "
                                    "media; the shipped params.yaml: demo)")
    splits: list[str] = param([], "the splits whose clips are analysed ([]: all); the sets "
                                  "come from the evaluation split")
    threshold: float = param(0.5, "silero-vad speech probability threshold (its default 0.5)",
                             ge=0.01, le=0.99)
    min_speech_ms: int = param(100, "shortest speech segment kept, ms (silero's default: 250; "
                                    "one-syllable words are shorter)", ge=0, le=60000)
    min_silence_ms: int = param(100, "silence that ends a speech segment, ms", ge=0, le=60000)
    speech_pad_ms: int = param(30, "padding added to each side of a speech segment, ms",
                               ge=0, le=5000)
    min_clip_speech_s: float = param(0.1, "a clip has speech from this many seconds of "
                                           "detected speech on (without ASR)", ge=0.0, le=60.0)
    asr: Literal["none", "whisper"] = param(
        "none", "ASR backend for word counts and timings: whisper (pip install openai-whisper; "
                "needs internet once for its weights) or none (the voice activity detector "
                "alone). With ASR a clip has speech when it holds a word, as the paper")
    asr_model: str = param("base.en", "the ASR backend's model name")
    n: int = param(0, "clips per set: 0 = every clip without speech (the paper's Sounds-241), "
                      "and as many with speech", ge=0, le=10_000_000)
    seed: int = param(0, "seed of the Speech-N draw", ge=0)
    truth: dict[str, str] = param({}, "dataset -> a word-timings parquet (video_id, start_s, "
                                      "end_s, word) to score the detector against (the demo's "
                                      "data/demo/words.parquet)")


@dataclasses.dataclass(frozen=True)
class ConceptsParams:
    """Stage concepts@<dataset>: audio-visual concept discovery (extensions.md §3)."""

    words_files: dict[str, str] = param(
        {}, "the datasets analysed: dataset -> its word timings parquet (video_id, start_s, "
            "end_s, word): the demo generator's data/demo/words.parquet, or stage speech@'s "
            "data/speech/<dataset>/words.parquet (written with analysis.speech.asr)")
    setting: str = param("fine_tuned", "the model analysed: zero_shot (stage train's), "
                                       "fine_tuned (finetune@<dataset>'s) or a checkpoint path "
                                       "from the project root (an audio-video AVLnet)")
    split: str = param("eval", "clips analysed: eval (the dataset's evaluation split), all, or "
                               "a split name of clips.parquet")
    top: int = param(50, "top-activating audio steps and clips per dimension (paper: 50)",
                     ge=1, le=100000)
    show: int = param(10, "top dimensions shown in the html page", ge=0, le=1000)
    threshold: float = param(0.5, "purity both labels must exceed for a dimension to count "
                                  "(dims_both_above, concepts_found)", ge=0.0, le=1.0)
    window_s: float = param(2.0, "an audio step is labelled with the words within +- this many "
                                 "seconds of its centre (paper: 2)", ge=0.0, le=60.0)
    stop_words: list[str] = param(
        ["the", "a", "an", "and", "to", "of", "in", "it", "is", "this", "that", "now", "okay",
         "ok", "so", "um", "uh", "you", "we", "i"], "words never used as an audio label "
                                                    "(lower case)")
    vocabulary: dict[str, list[str]] = param(
        {}, "dataset -> visual label words found in each clip's caption (e.g. YouCook2's food "
            "names); the demo defaults to its concept names")
    labels_files: dict[str, str] = param({}, "dataset -> parquet of clip_id, label (one row per "
                                             "label), used instead of the vocabulary")
    batch: int = param(32, "clips embedded per forward", ge=1, le=65536)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "CUDA when present, else the CPU")
    verify: Literal["sha256", "size"] = param("sha256", "how the feature shards are checked "
                                                        "before reading them")

    def __post_init__(self) -> None:
        if not self.setting.strip():
            _fail("setting", "empty; give zero_shot, fine_tuned or a checkpoint path")
        if not self.split.strip():
            _fail("split", "empty; give eval, all or a split name")


@dataclasses.dataclass(frozen=True)
class AnalysisParams:
    """Analyses of a trained model (AVLnet Table 4 and Sec. 4)."""

    speech: SpeechParams = param(SpeechParams(), "speech vs sounds (stages speech@, "
                                                 "speech_recall@)")
    concepts: ConceptsParams = param(ConceptsParams(), "concept discovery (stage concepts@)")


@dataclasses.dataclass(frozen=True)
class DemoLanguageParams:
    """One second-language demo dataset (params `demo_language.<name>`)."""

    language: str = param("de", "language code, a key of LANGUAGES in "
                                "pipeline/data/demo_language.py (de, fr, es)")
    n_videos: int = param(16, "number of videos", ge=2, le=2000)
    n_concepts: int = param(10, "concepts used: the English demo's first n (at most 12)",
                            ge=2, le=12)
    min_duration_s: float = param(10.0, "shortest video, seconds", ge=5.0, le=600.0)
    max_duration_s: float = param(16.0, "longest video, seconds", ge=5.0, le=600.0)
    segments_per_video: int = param(3, "concept segments per video (at most; as many as the "
                                       "length allows)", ge=1, le=20)
    frame_size: str = param("320x240", "WIDTHxHEIGHT of every video")
    fps: int = param(30, "frame rate", ge=1, le=120)
    seed: int = param(1, "RNG seed (not the English demo's 0, so the videos differ)", ge=0)
    workers: int = param(2, "parallel ffmpeg encoders", ge=1, le=64)

    def __post_init__(self) -> None:
        if self.min_duration_s > self.max_duration_s:
            _fail("min_duration_s", f"must be <= max_duration_s ({self.max_duration_s})")
        try:
            DemoParams(frame_sizes=[self.frame_size])
        except ParamsError as e:
            _fail("frame_size", str(e).split(": ", 1)[-1])


@dataclasses.dataclass(frozen=True)
class TransferParams:
    """Stage transfer@<target>: target only and the cascade trained on a target dataset, every
    Table 5.1 row scored on the source's and the target's eval splits."""

    targets: dict[str, str] = param({}, "target dataset -> source dataset, by name in "
                                        "`datasets` (e.g. demo-ja: demo); one stage per target")
    cascade: bool = param(True, "also fine-tune finetune@<source>'s model onto the target "
                                "(pretrain + source + target, the thesis's HowTo100M -> "
                                "YouCook2 -> another)")
    target_only_epochs: int = param(0, "epochs of the target-only model (from scratch); 0: "
                                        "finetune.epochs, the fine-tuned rows' budget. A model "
                                        "from scratch needs more: give it pretraining's",
                                    ge=0, le=100000)
    batch: int = param(64, "clips embedded per forward (evaluation)", ge=1, le=65536)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "evaluation device: CUDA when "
                                                           "present, else the CPU (training "
                                                           "uses train.device)")
    verify: Literal["sha256", "size"] = param("sha256", "how evaluation checks the feature "
                                                        "shards before reading them")

    def __post_init__(self) -> None:
        for target, source in self.targets.items():
            for name in (target, source):
                if not NAME.match(name):
                    _fail("targets", f"{target}: {name!r} is not a dataset name (a-z, "
                                      "0-9, _ and -, at most 64)")
            if target == source:
                _fail("targets", f"{target}: the source is the target; transfer needs "
                                  "another dataset as the source")


@dataclasses.dataclass(frozen=True)
class ImagesDemoParams:
    """The demo image set: still images of the demo's concepts with spoken captions."""

    n_concepts: int = param(10, "concepts used (the first N of pipeline/data/demo.CONCEPTS)",
                            ge=2, le=12)
    train_per_concept: int = param(60, "train images per concept", ge=1, le=10_000)
    val_per_concept: int = param(20, "val images per concept (a model that only knows the "
                                     "concept ranks a pair among this many alike)",
                                 ge=1, le=10_000)
    width: int = param(128, "image width, pixels", ge=32, le=4096)
    height: int = param(128, "image height, pixels", ge=32, le=4096)
    seed: int = param(0, "seeds layouts, backgrounds, sentences and voices")


@dataclasses.dataclass(frozen=True)
class ImagesParams:
    """Stage images@<set> (`avl images` for your own set): fine-tune a 2D-only AVLnet on image +
    spoken caption pairs with the visual encoder trained, beside the frozen-encoder variant
    (AVLnet Table 2: the paper trains the WHOLE ResNet-152 encoder on Places 400k at 224 px)."""

    sets: list[Literal["demo"]] = param([], "image sets stage images@<set> runs: demo = the "
                                            "generated demo set (opt-in). Your own Places / CSV "
                                            "set: `avl images` with --source")
    demo: ImagesDemoParams = param(ImagesDemoParams(), "the demo image set")
    init: str = param("pretrain-2d", "the 2D-only AVLnet the fine-tunes start from: "
                                     "pretrain-2d (the stage first pretrains one on "
                                     "train.dataset with the train section's recipe and "
                                     "model.visual 2d), a checkpoint path (a train run with "
                                     "train.model.visual: 2d), or none (from scratch)")
    encoder: Literal["layer4", "all"] = param(
        "all", "the visual encoder's trained part: all (the paper) or layer4 (ResNet-152's "
               "last stage: the CPU demo)")
    frozen_baseline: bool = param(True, "also fine-tune with the encoder frozen (its features "
                                        "cached once) and report both")
    encoder_bn: Literal["train", "frozen"] = param(
        "train", "BatchNorm of the trained encoder stages while fine-tuning: train (batch "
                 "statistics, running ones updated) or frozen (running statistics)")
    image_size: int = param(224, "centre crop fed to ResNet-152, pixels (paper: 224)",
                            ge=32, le=1024)
    resize: int = param(256, "short side the image is resized to before the crop, pixels "
                             "(paper: 256)", ge=32, le=2048)
    audio_frames: int = param(2048, "log-Mel frames per caption, padded (0 dB) or cropped "
                                     "(Places: 2048 = 20.48 s)", ge=16, le=100_000)
    weights: str = param("imagenet", "ResNet-152 weights: imagenet | a path | random[:SEED] "
                                     "(the offline demo: extract.demo_weights' backbone)")
    weights_dir: str = param("data/weights", "folder of the official weights files")
    embed_dim: int = param(4096, "joint embedding size D when init is none (paper: 4096)",
                           ge=1, le=65536)
    audio_widths: list[int] = param([128, 256, 512, 1024], "ResDAVEnet widths when init is "
                                                           "none (paper: 128..1024)")
    video_norm: Literal["none", "batchnorm"] = param(
        "none", "when init is none: standardise the 2048-d image feature before its head")
    batch: int = param(128, "pairs per batch", ge=2, le=65536)
    epochs: int = param(5, "epochs", ge=1, le=100_000)
    lr: float = param(1e-4, "Adam learning rate of the audio tower and the heads", gt=0)
    encoder_lr: float = param(1e-5, "Adam learning rate of the trained encoder layers", gt=0)
    mms_margin: float = param(0.001, "MMS loss margin (the audio-video model's loss)", ge=0)
    precision: Literal["auto", "float32", "bf16"] = param(
        "auto", "auto: bf16 autocast on CUDA, float32 on the CPU")
    device: Literal["auto", "cpu", "cuda"] = param("auto", "CUDA when present, else the CPU")
    threads: int = param(0, "torch CPU threads; 0 = torch's default", ge=0, le=1024)
    seed: int = param(0, "seeds initialisation and batch order")
    eval_every: int = param(0, "also evaluate on val every this many epochs (the learning "
                               "curve in metrics.json); 0 = at the end only", ge=0)
    max_failure_fraction: float = param(0.05, "the stage fails when more pairs than this "
                                              "share are unusable (missing, bad_image, ...)",
                                        ge=0, le=1)

    def __post_init__(self) -> None:
        if self.resize < self.image_size:
            _fail("resize", f"must be >= image_size ({self.image_size}), got {self.resize}")
        if len(self.audio_widths) != 4 or min(self.audio_widths) < 1:
            _fail("audio_widths", f"expected 4 positive widths, got {self.audio_widths}")
        if len(set(self.sets)) != len(self.sets):
            _fail("sets", f"{self.sets}: a set is named twice")


@dataclasses.dataclass(frozen=True)
class SegmentParams:
    """Stage segment@<dataset>: clips from the speech in a custom dataset's media (no clip
    annotations: the YouCook-Japanese recipe, extensions.md §4) -> its annotations CSV."""

    datasets: list[str] = param([], "custom datasets segmented, by name (each reads the CSV as "
                                    "manifest.<name>.annotations: segments.csv)")
    threshold: float = param(0.5, "silero-vad speech probability threshold; lower it when a "
                                  "language's speech is not found", ge=0.01, le=0.99)
    min_speech_ms: int = param(250, "shortest speech segment kept, ms", ge=0, le=60000)
    min_silence_ms: int = param(100, "silence that ends a speech segment, ms", ge=0, le=60000)
    speech_pad_ms: int = param(100, "padding added to each side of a speech segment, ms",
                               ge=0, le=5000)
    merge_gap_s: float = param(2.0, "speech segments at most this many seconds apart join one "
                                    "clip", ge=0.0, le=3600.0)
    min_s: float = param(5.0, "shortest clip, s (YouCook-Japanese: 5); shorter speech is "
                              "widened with the audio around it, or dropped and counted when "
                              "the video has no room", gt=0.0, le=3600.0)
    max_s: float = param(50.0, "longest clip, s (YouCook-Japanese: 50; at least 2 * min_s); "
                               "longer speech is cut at pauses", gt=0.0, le=86400.0)
    extend_short: bool = param(True, "widen clips shorter than min_s with context (false: "
                                     "drop them, counted)")
    val_fraction: float = param(0.2, "share of the videos with clips in val", ge=0.0, le=1.0)
    test_fraction: float = param(0.2, "share of the videos with clips in test (train: the "
                                      "rest)", ge=0.0, le=1.0)
    n_train: int = param(0, "train clips drawn at random (0: all)", ge=0, le=10_000_000)
    n_val: int = param(0, "val clips drawn at random (0: all)", ge=0, le=10_000_000)
    n_test: int = param(0, "test clips drawn at random (0: all)", ge=0, le=10_000_000)
    seed: int = param(0, "seed of the video split and the clip draws", ge=0)
    max_failed_fraction: float = param(0.5, "the stage fails when more than this share of "
                                            "the files cannot be decoded", ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        if self.max_s < 2 * self.min_s:
            _fail("max_s", f"{self.max_s} is below 2 * min_s ({2 * self.min_s}): long speech "
                           "could not be cut into pieces within both")
        if self.val_fraction + self.test_fraction > 1:
            _fail("test_fraction", "val_fraction + test_fraction must be at most 1")


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole params.yaml."""

    datasets: dict[str, Literal[KINDS]] = param(  # type: ignore[valid-type]
        {"demo": "demo"}, "datasets the pipeline runs: name -> kind (a built-in dataset "
                          "keeps its own name; custom and lsmdc ones take any name)")
    demo: DemoParams = param(DemoParams(), "demo generator")
    manifest: ManifestSection = param(ManifestSection(), "manifest stage")
    demo_language: dict[str, DemoLanguageParams] = param(
        {}, "second-language demos (stage demo_language@<name>): dataset name -> settings")
    segment: SegmentParams = param(SegmentParams(), "speech-segmented clips of own media "
                                                    "(stage segment@)")
    cluster: ClusterParams = param(ClusterParams(), "dask cluster for download and extraction")
    download: DownloadParams = param(DownloadParams(), "download stage")
    extract: ExtractParams = param(ExtractParams(), "feature extraction stage")
    train: TrainParams = param(TrainParams(), "pretraining stage")
    finetune: FinetuneParams = param(FinetuneParams(), "fine-tuning stage")
    evaluate: EvaluateParams = param(EvaluateParams(), "evaluation stage")
    text: TextParams = param(TextParams(), "AVLnet-Text stages")
    analysis: AnalysisParams = param(AnalysisParams(), "analyses of the trained models")
    search: SearchParams = param(SearchParams(), "spoken-query search (index@, spoken@, "
                                                 "avl search)")
    transfer: TransferParams = param(TransferParams(), "language cascade, Table 5.1 (stage "
                                                       "transfer@<target>)")
    images: ImagesParams = param(ImagesParams(), "images with spoken captions (stage "
                                                 "images@<set>, `avl images`)")

    def __post_init__(self) -> None:
        for name, kind in self.datasets.items():
            if not NAME.match(name):
                _fail("datasets", f"{name!r} is not a usable name (a-z, 0-9, _ and -, at most "
                                  "64, starting with a letter or digit)")
            if name in RESERVED_NAMES:
                _fail("datasets", f"{name!r} is reserved (a folder of the reports: "
                                  f"{RESERVED_NAMES[name]}); choose another name")
            if kind in DATASETS and name != kind:
                _fail(f"datasets.{name}", f"a built-in dataset keeps its name: write "
                                          f"`{kind}: {kind}`")
            if kind in OWN_KINDS and name in DATASETS:
                _fail(f"datasets.{name}", f"{name!r} is a built-in dataset's name; choose "
                                          "another for a " + kind + " dataset")
        for key in ("finetune", "evaluate", "search"):
            for name in getattr(self, key).datasets:
                if name not in self.datasets:
                    _fail(f"{key}.datasets", f"{name!r} is not in `datasets` "
                                             f"({', '.join(self.datasets)})")
        for key, names in (("text.finetune.datasets", self.text.finetune.datasets),
                           ("text.evaluate.datasets", self.text.evaluate.datasets),
                           ("text.captions", self.text.captions),
                           ("segment.datasets", self.segment.datasets),
                           ("demo_language", list(self.demo_language)),
                           ("transfer.targets", [*self.transfer.targets,
                                                 *self.transfer.targets.values()]),
                           ("analysis.speech.datasets", self.analysis.speech.datasets),
                           ("analysis.speech.truth", list(self.analysis.speech.truth)),
                           ("analysis.concepts.words_files",
                            list(self.analysis.concepts.words_files))):
            for name in names:
                if name not in self.datasets:
                    _fail(key, f"{name!r} is not in `datasets` ({', '.join(self.datasets)})")
        if self.text.captions and self.text.train.dataset not in self.text.captions:
            _fail("text.train.dataset", f"{self.text.train.dataset!r} has no caption store: add "
                                        "it to text.captions (stage captions@ ingests its "
                                        "caption.json)")
        if self.text.train.model.arch == "avlnet":
            _fail("text.train.model.arch", "a text arch is needed here (avlnet_text_tri, "
                                           "avlnet_text_fused or mmv_fac)")
        if self.train.model.arch != "avlnet":
            _fail("train.model.arch", f"{self.train.model.arch} trains on caption clips: set it "
                                      "in text.train.model (stage train_text); train is the "
                                      "audio-video AVLnet")
        if self.train.dataset not in self.datasets:
            _fail("train.dataset", f"{self.train.dataset!r} is not in `datasets` "
                                   f"({', '.join(self.datasets)})")

    def media_dirs(self, name: str, videos_dir: Path) -> list[Path]:
        """Where dataset `name`'s media may lie: its videos folder (downloads), plus for own
        media the media folder they are referenced in (data/sources/<name>/<media>, or an
        absolute folder)."""
        out = [Path(videos_dir)]
        if self.kind(name) in OWN_KINDS and self.manifest.of(name).media is not None:
            media = Path(self.manifest.of(name).media)
            # inside data/sources/<name> (pipeline.data.sources.source_folder) unless absolute
            out.append(media if media.is_absolute() else Path("data/sources", name, media))
        return out

    def kind(self, name: str) -> str:
        """The kind of dataset `name`; ParamsError when `name` is not configured."""
        if name not in self.datasets:
            _fail("datasets", f"no dataset named {name!r} (configured: "
                              f"{', '.join(self.datasets)}); add `{name}: <kind>` to it")
        return self.datasets[name]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key given twice in one mapping is an error (PyYAML
    keeps the last silently), and `1e-3` is a float as in YAML 1.2 (and DVC), not a string."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ParamsError(f"line {line}: key {key!r} given twice (also on line {seen[key]}); "
                              "keep one")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Reads and validates the whole params file; raises ParamsError naming the file and key."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") \
            from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") \
            from None
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    try:
        return _with_own_entries(data)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None


def _with_own_entries(data: dict) -> Params:
    """Params from `data`, with the manifest entries of custom/lsmdc datasets (keyed by their
    names, which the fixed ManifestSection does not know) parsed into `manifest.own`."""
    datasets = data.get("datasets")
    if isinstance(datasets, list):
        _fail("datasets", "is a mapping name -> kind now, e.g. `datasets: {demo: demo, "
                          "youcook2: youcook2}`")
    data = dict(data)
    section = data.get("manifest")
    own_kinds = {n: k for n, k in (datasets or {}).items() if k in OWN_KINDS} \
        if isinstance(datasets, dict) else {}
    entries = {}
    if isinstance(section, dict):
        section = dict(section)
        entries = {n: section.pop(n) for n in list(section) if n in own_kinds}
        data["manifest"] = section
    params = from_dict(Params, data)
    own = {}
    for name, kind in own_kinds.items():
        entry = entries.get(name)
        if entry is None and kind == "custom":
            entry = {}
        own[name] = _coerce(entry, OWN_PARAMS[kind], f"manifest.{name}")
    return dataclasses.replace(params, manifest=dataclasses.replace(params.manifest, own=own))

"""Availability audit: manifests + availability ledger -> per-split counts, clip coverage, the
paper's counts side by side, change since the previous audit, and the reports that show them."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.download.ledger import AVAILABLE, PENDING, STATUSES, now, read_availability
from pipeline.data.manifest import read_clips, read_videos, write_json_atomic, write_parquet_atomic
from pipeline.safety import check_safe_id

log = logging.getLogger(__name__)

TOTAL = "total"
CHANGES = ("newly_gone", "came_back", "newly_checked")
MAX_IDS = 1000  # ids per change list kept in the JSON; the full lists go to <ds>/changes/*.txt

# What the AVLnet authors had, from /work/shared/spec/datasets.md ("The datasets and what the
# paper could get"). measure = the audit count it compares with; listed = the paper's denominator.
PAPER_COUNTS: dict[str, dict[str, dict]] = {
    "youcook2": {
        "train": {"measure": "clips_covered", "count": 9586, "listed": 10337},
        "val": {"measure": "clips_covered", "count": 3350, "listed": 3492}},
    "msrvtt": {
        "train_7k": {"measure": "clips_covered", "count": 6783, "listed": 7000},
        "test_1k_a": {"measure": "clips_covered", "count": 968, "listed": 1000,
                      "note": "the 32 others count as failures in R@K"},
        TOTAL: {"measure": "videos_with_audio", "count": 5722, "listed": None}},
    "crosstask": {
        "train": {"measure": "clips_covered", "count": 17840, "listed": None, "comparable": False,
                  "note": "the paper's training clips are ASR-defined; ours are annotated steps"},
        "val": {"measure": "clips_covered", "count": 2819, "listed": None}},
    "howto100m": {
        "train": {"measure": "videos_available", "count": 1166089, "listed": 1238792,
                  "note": "downloaded Dec 2019 - Mar 2020"}},
}

_TRANSIENT = "transient: re-run the download later"
# one line per reason in the report (reasons as in pipeline/download/availability.py and datasets.md)
REASON_MEANING = {
    "bot_check": f"{_TRANSIENT}, with cookies (cookiefile) and slower pacing",
    "rate_limited": f"{_TRANSIENT}, with slower pacing or a proxy",
    "forbidden": f"{_TRANSIENT} (HTTP 403 is mostly throttling), with cookies and pacing",
    "network": f"{_TRANSIENT}; check the connection",
    "extractor_broken": f"{_TRANSIENT} after updating yt-dlp",
    "not_yet_live": f"{_TRANSIENT}: a live event or premiere that has not started",
    "format_unavailable": "configuration: no format matches the format setting; relax it",
    "age_restricted": "needs auth: re-run with cookies of a signed-in adult account",
    "members_only": "needs auth: only channel members can get it (cookies of a member)",
    "paid": "needs auth: paid content",
    "geo_blocked": "regional: blocked in this country; a proxy elsewhere may get it",
    "private": "permanent: the video is private",
    "removed_by_uploader": "permanent: removed by the uploader",
    "account_terminated": "permanent: the uploader's account was terminated",
    "copyright": "permanent: removed after a copyright claim",
    "policy_removed": "permanent: removed for violating YouTube's policies",
    "unavailable_unspecified": "permanent: YouTube says only 'video unavailable'",
    "not_found": "permanent: the URL answers 404/410",
    "invalid_id": "permanent: not a valid YouTube id or URL",
    "file_invalid": "permanent: downloaded, but not readable as media (empty, random bytes, "
                    "truncated); re-checked only with --recheck-unavailable",
    "local_error": "an error on this machine (permissions, disk, a special file in the way); "
                   "`message` names the file: fix it and re-run",
    "url_rejected": "configuration: the URL is not http(s) or a file: URL outside "
                    "download.file_root; fix the manifest or the setting",
    "unknown": "unclassified error: read `message` in availability.parquet",
    "no_audio": "downloaded, but the file has no audio stream: unusable for audio-video work",
    "not_checked": "pending: never tried; run the download stage",
}
# fixed colours so every chart reads the same (status, or the no-audio part of available)
COLOURS = {"available": "#2ca02c", "available_no_audio": "#98df8a", "unavailable": "#d62728",
           "needs_auth": "#ff7f0e", "transient_failure": "#9467bd", "pending": "#7f7f7f"}
# the per-video state an audit leaves for the next one to compare with (<out>/<ds>/snapshot.parquet)
SNAPSHOT_SCHEMA = pa.schema([pa.field("video_id", pa.string(), nullable=False),
                             pa.field("status", pa.string(), nullable=False),
                             pa.field("reason", pa.string()), pa.field("has_audio", pa.bool_())])


class AuditError(ValueError):
    """The manifests to audit are missing or unreadable."""


def _load(manifest_dir: Path) -> tuple[list[dict], list[tuple[str, str]], list[str], bool]:
    """(one state per manifest video, (video_id, split) per clip, split order, ledger found).

    Every table is checked as it is read (ids path-safe, the ledger's schema); split names
    become folder names, so they must be path-safe too."""
    for name in ("videos.parquet", "clips.parquet"):
        if not (manifest_dir / name).exists():
            raise AuditError(f"{manifest_dir / name} not found: run the manifest stage for this "
                             "dataset first")
    videos = read_videos(manifest_dir / "videos.parquet").select(["video_id", "split"]) \
        .to_pylist()
    clips = read_clips(manifest_dir / "clips.parquet")
    clips = list(zip(clips.column("video_id").to_pylist(), clips.column("split").to_pylist()))
    mjson = manifest_dir / "manifest.json"
    try:
        order = list(json.loads(mjson.read_text())["splits"]) if mjson.exists() else []
    except (ValueError, KeyError, TypeError) as e:
        raise AuditError(f"{mjson}: not a manifest summary ({type(e).__name__}: {e}); run the "
                         "manifest stage for this dataset again") from None
    seen = {s for v in videos for s in v["split"].split(",")} | {s for _, s in clips}
    order += sorted(seen - set(order))
    for split in order:
        check_safe_id(split, f"{manifest_dir}: split name")
    apath = manifest_dir / "availability.parquet"
    ledger: dict[str, dict] = {}
    if apath.exists():
        cols = ["video_id", "status", "reason", "has_audio", "last_checked", "ytdlp_version"]
        ledger = {r["video_id"]: r for r in read_availability(apath).select(cols).to_pylist()}
    else:
        log.warning("%s not found: every video counts as pending", apath)
    states = []
    for v in videos:
        r = ledger.get(v["video_id"], {})
        st = {"video_id": v["video_id"], "splits": v["split"].split(","),
              "status": r.get("status", PENDING), "reason": r.get("reason"),
              "has_audio": r.get("has_audio"), "last_checked": r.get("last_checked"),
              "ytdlp_version": r.get("ytdlp_version")}
        # usable = available with an audio stream; otherwise `why` says what is missing
        st["usable"] = st["status"] == AVAILABLE and st["has_audio"] is True
        st["why"] = None if st["usable"] else "no_audio" if st["status"] == AVAILABLE \
            else st["reason"] or ("not_checked" if st["status"] == PENDING else "unknown")
        states.append(st)
    extra = len(set(ledger) - {v["video_id"] for v in videos})
    if extra:
        log.warning("%s: %d videos are not in the manifest any more; ignored", apath, extra)
    return states, clips, order, apath.exists()


def _changes(previous: dict, states: list[dict]) -> dict[str, list[str]]:
    """Full sorted id lists: newly_gone (was available, now not), came_back (was checked and not
    available, now available), newly_checked (was pending or unlisted, now checked)."""
    out: dict[str, list[str]] = {k: [] for k in CHANGES}
    for s in states:
        was = previous["videos"].get(s["video_id"], {}).get("status", PENDING)
        if was == AVAILABLE and s["status"] != AVAILABLE:
            out["newly_gone"].append(s["video_id"])
        elif was not in (AVAILABLE, PENDING) and s["status"] == AVAILABLE:
            out["came_back"].append(s["video_id"])
        if was == PENDING and s["status"] != PENDING:
            out["newly_checked"].append(s["video_id"])
    return {k: sorted(v) for k, v in out.items()}


def _summarize(ds: str, states: list[dict], clips: list[tuple[str, str]], order: list[str],
               ledger_found: bool, previous: dict | None) -> dict:
    splits = {k: {"videos_listed": 0, "videos_available": 0, "videos_with_audio": 0,
                  "clips_listed": 0, "clips_covered": 0, "by_status": dict.fromkeys(STATUSES, 0),
                  "by_reason": Counter()} for k in [*order, TOTAL]}
    for s in states:
        for k in [*s["splits"], TOTAL]:  # a video listed in two splits counts in both
            c = splits[k]
            c["videos_listed"] += 1
            c["by_status"][s["status"]] = c["by_status"].get(s["status"], 0) + 1
            c["videos_available"] += s["status"] == AVAILABLE
            c["videos_with_audio"] += s["usable"]
            if not s["usable"]:
                c["by_reason"][s["why"]] += 1
    usable = {s["video_id"] for s in states if s["usable"]}
    for vid, split in clips:
        for k in (split, TOTAL):
            splits[k]["clips_listed"] += 1
            splits[k]["clips_covered"] += vid in usable
    paper = PAPER_COUNTS.get(ds, {})
    for k, c in splits.items():
        c["by_reason"] = dict(sorted(c["by_reason"].items()))
        c["clip_coverage"] = round(c["clips_covered"] / c["clips_listed"], 6) \
            if c["clips_listed"] else None
        p = paper.get(k)
        c["paper"] = None if p is None else {"comparable": True, "note": None, **p,
                                             "ours": c[p["measure"]]}
    checked = [s["last_checked"] for s in states if s["last_checked"] is not None]
    changes = None
    if previous is not None:
        full = _changes(previous, states)
        changes = {"previous_audit": previous.get("audit_date"),
                   **{k: {"count": len(v), "ids": v[:MAX_IDS], "ids_truncated": len(v) > MAX_IDS}
                      for k, v in full.items()}}
    return {"dataset": ds, "audit_date": now().isoformat(timespec="seconds"),
            "ledger_found": ledger_found,
            "newest_last_checked": max(checked).isoformat() if checked else None,
            "ytdlp_versions": dict(sorted(Counter(s["ytdlp_version"] for s in states
                                                  if s["ytdlp_version"]).items())),
            "splits": splits, "changes": changes}


def audit_dataset(ds: str, manifest_dir: Path, previous: dict | None) -> dict:
    """Audits manifests/<ds> (videos/clips parquet, manifest.json, availability.parquet).

    `previous` is read_snapshot()'s dict of the last audit, or None. Returns a JSON-able dict:
    per split and `total`: videos listed/available/with audio, counts by status and by reason,
    clips listed/covered (video available with audio) and coverage fraction, the paper's count;
    plus audit date, newest last_checked, yt-dlp versions and the changes since `previous`."""
    return _summarize(ds, *_load(Path(manifest_dir)), previous)


def read_snapshot(path: Path) -> dict | None:
    """A snapshot.parquet -> {"audit_date": str, "videos": {video_id: {status, reason,
    has_audio}}}, or None when there is none (first audit). AuditError when it is unreadable."""
    if not Path(path).exists():
        return None
    try:
        t = pq.read_table(path).select(SNAPSHOT_SCHEMA.names)
    except (pa.ArrowException, KeyError) as e:
        raise AuditError(f"{path}: unreadable audit snapshot ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); move it away to "
                         "start the comparison afresh") from None
    meta = t.schema.metadata or {}
    return {"audit_date": meta.get(b"audit_date", b"").decode() or None,
            "videos": {r.pop("video_id"): r for r in t.to_pylist()}}


def _write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _id_file(path: Path, header: str, ids: list[str]) -> None:
    _write_text("".join(f"{line}\n" for line in [f"# {header}", *ids]), path)


@dataclass
class _Inputs:
    """Everything one dataset's audit reads, read and checked before anything is written."""

    ds: str
    states: list[dict]
    clips: list[tuple[str, str]]
    order: list[str]
    found: bool
    previous: dict | None


def _read_inputs(ds: str, manifest_dir: Path, out: Path) -> _Inputs:
    return _Inputs(ds, *_load(Path(manifest_dir)),
                   read_snapshot(Path(out) / ds / "snapshot.parquet"))


def audit_and_write(ds: str, manifest_dir: Path, out: Path) -> dict:
    """Audits one dataset against the snapshot in <out>/<ds>/ and writes every report:
    <out>/<ds>.{json,md,png}, <out>/<ds>/<split>/missing_ids.txt, <out>/<ds>/changes/*.txt and,
    last, the new <out>/<ds>/snapshot.parquet. Returns the audit dict."""
    return _write(_read_inputs(ds, manifest_dir, out), Path(out))


def audit_all(manifest_dirs: dict[str, Path], out: Path) -> dict[str, dict]:
    """Audits every dataset ({name: manifests/<name>}) and writes its reports and the summary.
    All inputs are read and checked first: a bad ledger or manifest of one dataset stops the
    audit before any report, of any dataset, is rewritten."""
    inputs = [_read_inputs(ds, d, out) for ds, d in manifest_dirs.items()]
    results = {i.ds: _write(i, Path(out)) for i in inputs}
    write_summary(results, out)
    return results


def _write(i: _Inputs, out: Path) -> dict:
    ds, states, order, previous = i.ds, i.states, i.order, i.previous
    snap = out / ds / "snapshot.parquet"
    result = _summarize(ds, states, i.clips, order, i.found, previous)
    write_report(result, out)
    date = result["audit_date"]
    for split in order:
        ids = sorted(s["video_id"] for s in states if split in s["splits"] and not s["usable"])
        _id_file(out / ds / split / "missing_ids.txt", f"{ds} {split}: YouTube ids of the "
                 f"videos not available with audio, audit {date}", ids)
    for k, ids in (_changes(previous, states) if previous else dict.fromkeys(CHANGES)).items():
        f = out / ds / "changes" / f"{k}.txt"
        if ids is None:  # first audit (or the snapshot was deleted): no stale lists
            f.unlink(missing_ok=True)
        else:
            _id_file(f, f"{ds}: videos {k.replace('_', ' ')} between the audits of "
                     f"{previous['audit_date']} and {date}", ids)
    table = pa.Table.from_pylist([{k: s[k] for k in ("video_id", "status", "reason", "has_audio")}
                                  for s in states], schema=SNAPSHOT_SCHEMA)
    write_parquet_atomic(table.replace_schema_metadata({"audit_date": date, "dataset": ds}), snap)
    return result


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def _paper_cell(p: dict | None, ours: bool = True) -> str:
    """'9,586 of 10,337 clips (ours 9,012)'; '-' when the paper has no count for the split."""
    if p is None:
        return "-"
    unit = {"clips_covered": "clips", "videos_available": "videos"}.get(p["measure"],
                                                                       "videos with audio")
    text = _n(p["count"]) + (f" of {_n(p['listed'])}" if p["listed"] else "") + f" {unit}"
    return text + (" (not comparable)" if not p["comparable"] else "") \
        + (f" (ours {_n(p['ours'])})" if ours else "")


_HEADER = ["videos listed | available | with audio | clips listed | clips covered | coverage "
           "| paper's count |", "--:|--:|--:|--:|--:|--:|---|"]


def _cells(c: dict) -> str:
    cov = "-" if c["clip_coverage"] is None else f"{100 * c['clip_coverage']:.1f}%"
    return " | ".join([*(_n(c[k]) for k in ("videos_listed", "videos_available",
                                              "videos_with_audio", "clips_listed",
                                              "clips_covered")), cov, _paper_cell(c["paper"])])


def _markdown(r: dict) -> str:
    ds, sp, ch = r["dataset"], r["splits"], r["changes"]
    lines = [f"# Availability audit: {ds}", "",
             f"Audit {r['audit_date']}; newest check {r['newest_last_checked'] or 'none'}; "
             f"yt-dlp {', '.join(r['ytdlp_versions']) or 'none recorded'}.", ""]
    if not r["ledger_found"]:
        lines += ["**No availability.parquet: every video counts as pending** (run the "
                  "download stage).", ""]
    lines += [f"| split | {_HEADER[0]}", f"|---|{_HEADER[1]}"]
    lines += [f"| {k} | {_cells(c)} |" for k, c in sp.items()]
    lines += ["", "Clips covered: clips whose video is available with an audio stream.",
              *(f"- {k}: {c['paper']['note']}" for k, c in sp.items()
                if c["paper"] and c["paper"]["note"])]
    lines += ["", "## Why videos are missing (all splits)", "",
              "| reason | videos | what it means |", "|---|--:|---|"]
    lines += [f"| {k} | {_n(n)} | {REASON_MEANING.get(k, 'see `message` in availability.parquet')}"
              " |" for k, n in sorted(sp[TOTAL]["by_reason"].items(), key=lambda kv: -kv[1])]
    if not sp[TOTAL]["by_reason"]:
        lines[-2:] = ["Every listed video is available with audio."]
    lines += ["", "Status (all splits): " + ", ".join(
        f"{k} {_n(n)}" for k, n in sp[TOTAL]["by_status"].items()), "", "## Since the last audit",
        "", "First audit here: nothing to compare." if ch is None
        else f"Previous audit: {ch['previous_audit']}."]
    for k in CHANGES if ch else ():
        ids = ch[k]["ids"][:20]
        more = ", ..." if ch[k]["count"] > len(ids) else ""
        lines.append(f"- {k.replace('_', ' ')}: {_n(ch[k]['count'])}"
                     + (f" ({', '.join(ids)}{more})" if ids else ""))
    lines += ["", f"Ids: `{ds}/<split>/missing_ids.txt`, `{ds}/changes/*.txt`."]
    return "\n".join(lines) + "\n"


def _chart(r: dict, path: Path) -> None:
    """Horizontal 100%-stacked bars of status per split, with the listed count beside each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [k for k, c in r["splits"].items() if c["videos_listed"]] or [TOTAL]
    fig = Figure(figsize=(8, 1.2 + 0.5 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    for key, colour in COLOURS.items():
        cs = [r["splits"][k] for k in names]
        n = [c["videos_available"] - c["videos_with_audio"] for c in cs] \
            if key == "available_no_audio" else [c["videos_with_audio"] for c in cs] \
            if key == AVAILABLE else [c["by_status"][key] for c in cs]
        vals = [100 * x / max(c["videos_listed"], 1) for x, c in zip(n, cs)]
        ax.barh(names, vals, left=left, color=colour, label={
            "available": "available, with audio",
            "available_no_audio": "available, no audio"}.get(key, key))
        left = [a + b for a, b in zip(left, vals)]
    for i, k in enumerate(names):
        ax.text(101, i, f"{r['splits'][k]['videos_listed']:,} videos", va="center", fontsize=8)
    ax.set(xlim=(0, 118), xticks=range(0, 101, 20), xlabel="% of the split's videos",
           title=f"{r['dataset']}: availability by split (audit {r['audit_date'][:10]})")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(names) < 3 else -0.2),
              ncol=3, fontsize=8, frameon=False)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, path)


def write_report(result: dict, out: Path) -> None:
    """<out>/<ds>.json (the dict), <out>/<ds>.md (readable report), <out>/<ds>.png (chart)."""
    out, ds = Path(out), result["dataset"]
    write_json_atomic(result, out / f"{ds}.json")
    _write_text(_markdown(result), out / f"{ds}.md")
    _chart(result, out / f"{ds}.png")


def write_summary(results: dict[str, dict], out: Path) -> None:
    """<out>/summary.json and summary.md: one row per dataset and split (and its total)."""
    keys = ("videos_listed", "videos_available", "videos_with_audio", "clips_listed",
            "clips_covered", "clip_coverage")
    rows = [{"dataset": ds, "split": k, "audit_date": r["audit_date"],
             "ledger_found": r["ledger_found"], **{f: c[f] for f in keys},
             "paper": _paper_cell(c["paper"], ours=False) if c["paper"] else None}
            for ds, r in results.items() for k, c in r["splits"].items()]
    write_json_atomic({"rows": rows}, Path(out) / "summary.json")
    no_ledger = [ds for ds, r in results.items() if not r["ledger_found"]]
    lines = ["# Availability audit: summary", "", *(
        [f"No availability.parquet (every video pending): {', '.join(no_ledger)}.", ""]
        if no_ledger else []), f"| dataset | split | {_HEADER[0]}", f"|---|---|{_HEADER[1]}"]
    lines += [f"| {ds} | {k} | {_cells(c)} |" for ds, r in results.items()
              for k, c in r["splits"].items()]
    _write_text("\n".join(lines) + "\n", Path(out) / "summary.md")

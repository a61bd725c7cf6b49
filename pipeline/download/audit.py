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

from pipeline.download.ledger import (AVAILABLE, NEEDS_AUTH, PENDING, STATUSES, TRANSIENT,
                                      UNAVAILABLE, now, read_availability, read_selection,
                                      sample_videos)
from pipeline.data.manifest import (ManifestError, read_clips, read_videos, write_json_atomic,
                                    write_parquet_atomic)
from pipeline.safety import UserError, check_safe_id

log = logging.getLogger(__name__)

TOTAL = "total"
# a dataset's outcome in one audit: reports rewritten; or left as they were because its inputs
# are missing (run its stages first) or unreadable (fix them)
AUDITED, MISSING_INPUTS, BAD_INPUTS = "audited", "missing_inputs", "bad_inputs"
# statuses of videos known not to be usable (a re-run will not change that without a reason to)
# and of videos never reached, or failed in a way a re-run may fix (network, throttling, ...)
GONE = (UNAVAILABLE, NEEDS_AUTH)
NOT_REACHED = (PENDING, TRANSIENT)
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
    """The manifests to audit are unreadable (MissingInputs: missing)."""


class MissingInputs(AuditError):
    """A dataset's manifests or ledger are not there (yet): its stages have not run here."""


def _load(manifest_dir: Path) -> tuple[list[dict], list[tuple[str, str]], list[str], bool,
                                       dict | None]:
    """(one state per manifest video, (video_id, split) per clip, split order, ledger found,
    the download's sample or None).

    Every table is checked as it is read (ids path-safe, the ledger's schema); split names
    become folder names, so they must be path-safe too. A state's `in_sample` says whether the
    audit counts it: the download's sample (download.max_videos / splits, recorded in
    availability.parquet) plus every video tried at least once; all when there is no sample."""
    for name in ("videos.parquet", "clips.parquet"):
        if not (manifest_dir / name).exists():
            raise MissingInputs(f"{manifest_dir / name} not found: run the manifest stage for "
                                "this dataset first (dvc repro manifest@<name>)")
    vtable = read_videos(manifest_dir / "videos.parquet").select(["video_id", "split"])
    videos = vtable.to_pylist()
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
    scope = selection = None
    if apath.exists():
        cols = ["video_id", "status", "reason", "has_audio", "last_checked", "ytdlp_version",
                "attempts"]
        ledger = {r["video_id"]: r for r in read_availability(apath).select(cols).to_pylist()}
        selection = read_selection(apath)
    else:
        log.warning("%s not found: every video counts as pending", apath)
    if selection:
        scope = set(sample_videos(vtable, selection["max_videos"], selection["splits"])
                    .column("video_id").to_pylist())
        scope |= {v for v, r in ledger.items() if r["attempts"] or r["status"] != PENDING}
    states = []
    for v in videos:
        r = ledger.get(v["video_id"], {})
        st = {"video_id": v["video_id"], "splits": v["split"].split(","),
              "status": r.get("status", PENDING), "reason": r.get("reason"),
              "has_audio": r.get("has_audio"), "last_checked": r.get("last_checked"),
              "ytdlp_version": r.get("ytdlp_version"),
              "in_sample": scope is None or v["video_id"] in scope}
        # usable = available with an audio stream; otherwise `why` says what is missing, and
        # the video is either known gone (or without audio) or not reached yet
        st["usable"] = st["status"] == AVAILABLE and st["has_audio"] is True
        st["why"] = None if st["usable"] else "no_audio" if st["status"] == AVAILABLE \
            else st["reason"] or ("not_checked" if st["status"] == PENDING else "unknown")
        st["gone"] = not st["usable"] and st["status"] in (AVAILABLE, *GONE)
        st["not_reached"] = st["status"] in NOT_REACHED
        states.append(st)
    extra = len(set(ledger) - {v["video_id"] for v in videos})
    if extra:
        log.warning("%s: %d videos are not in the manifest any more; ignored", apath, extra)
    n_in = sum(s["in_sample"] for s in states)
    sample = None if n_in == len(states) else {"videos": n_in, "listed": len(states),
                                               **selection}
    return states, clips, order, apath.exists(), sample


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
               ledger_found: bool, previous: dict | None, sample: dict | None = None) -> dict:
    """Counts over the videos in the sample (all of them when `sample` is None); the
    manifest's own counts as videos/clips_in_manifest."""
    splits = {k: {"videos_listed": 0, "videos_available": 0, "videos_with_audio": 0,
                  "videos_known_gone": 0, "videos_never_reached": 0,
                  "clips_listed": 0, "clips_covered": 0, "videos_in_manifest": 0,
                  "clips_in_manifest": 0, "by_status": dict.fromkeys(STATUSES, 0),
                  "by_reason": Counter()} for k in [*order, TOTAL]}
    for s in states:
        for k in [*s["splits"], TOTAL]:  # a video listed in two splits counts in both
            c = splits[k]
            c["videos_in_manifest"] += 1
            if not s["in_sample"]:       # never tried and outside the sample: not missing
                continue
            c["videos_listed"] += 1
            c["by_status"][s["status"]] = c["by_status"].get(s["status"], 0) + 1
            c["videos_available"] += s["status"] == AVAILABLE
            c["videos_with_audio"] += s["usable"]
            c["videos_known_gone"] += s["gone"]
            c["videos_never_reached"] += s["not_reached"]
            if not s["usable"]:
                c["by_reason"][s["why"]] += 1
    usable = {s["video_id"] for s in states if s["usable"]}
    sampled = {s["video_id"] for s in states if s["in_sample"]}
    for vid, split in clips:
        for k in (split, TOTAL):
            splits[k]["clips_in_manifest"] += 1
            splits[k]["clips_listed"] += vid in sampled
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
    return {"dataset": ds, "status": AUDITED, "audit_date": now().isoformat(timespec="seconds"),
            "ledger_found": ledger_found, "sample": sample,
            "newest_last_checked": max(checked).isoformat() if checked else None,
            "ytdlp_versions": dict(sorted(Counter(s["ytdlp_version"] for s in states
                                                  if s["ytdlp_version"]).items())),
            "splits": splits, "changes": changes}


def audit_dataset(ds: str, manifest_dir: Path, previous: dict | None) -> dict:
    """Audits manifests/<ds> (videos/clips parquet, manifest.json, availability.parquet).

    `previous` is read_snapshot()'s dict of the last audit, or None. Returns a JSON-able dict:
    per split and `total`: videos listed/available/with audio/known gone/never reached, counts
    by status and by reason, clips listed/covered (video available with audio) and coverage
    fraction, the paper's count, all over the download's sample (`sample`: {videos, listed,
    max_videos, splits}, or None for the whole manifest) with the manifest's own counts as
    videos/clips_in_manifest; plus audit date, newest last_checked, yt-dlp versions and the
    changes since `previous`."""
    states, clips, order, found, sample = _load(Path(manifest_dir))
    return _summarize(ds, states, clips, order, found, previous, sample)


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
    sample: dict | None
    previous: dict | None


def _read_inputs(ds: str, manifest_dir: Path, out: Path) -> _Inputs:
    """MissingInputs when the manifests are not there, or the ledger is not although the last
    audit had results (a report of all-pending would replace a good baseline)."""
    previous = read_snapshot(Path(out) / ds / "snapshot.parquet")
    i = _Inputs(ds, *_load(Path(manifest_dir)), previous)
    if not i.found and previous and any(v["status"] != PENDING
                                        for v in previous["videos"].values()):
        raise MissingInputs(f"{Path(manifest_dir) / 'availability.parquet'} not found, though "
                            f"the audit of {previous['audit_date']} had results: run "
                            f"download@{ds} (or dvc pull) first")
    return i


def audit_and_write(ds: str, manifest_dir: Path, out: Path) -> dict:
    """Audits one dataset against the snapshot in <out>/<ds>/ and writes every report:
    <out>/<ds>.{json,md,png}, <out>/<ds>/<split>/{missing_ids,never_reached_ids}.txt,
    <out>/<ds>/changes/*.txt and, last, the new <out>/<ds>/snapshot.parquet. Returns the
    audit dict. Raises (AuditError, MissingInputs, LedgerError, ...) before writing anything."""
    return _write(_read_inputs(ds, manifest_dir, out), Path(out))


def audit_all(manifest_dirs: dict[str, Path], out: Path) -> dict[str, dict]:
    """Audits every dataset ({name: manifests/<name>}) on its own and writes the summary.

    A dataset whose inputs are missing or unreadable is reported as such ({dataset, status:
    missing_inputs | bad_inputs, message, last_good_audit}); its reports and snapshot stay as
    the last good audit left them, so that one stays its baseline. The others are audited and
    their reports rewritten. -> {name: audit dict (status "audited") or that record}."""
    out = Path(out)
    results: dict[str, dict] = {}
    for ds, mdir in manifest_dirs.items():
        try:
            results[ds] = audit_and_write(ds, mdir, out)
        except MissingInputs as e:
            results[ds] = _not_audited(ds, MISSING_INPUTS, str(e), out)
        except (AuditError, ManifestError, UserError) as e:  # corrupt, edited, unsafe
            results[ds] = _not_audited(ds, BAD_INPUTS, str(e), out)
    write_summary(results, out)
    return results


def _not_audited(ds: str, status: str, message: str, out: Path) -> dict:
    snap = out / ds / "snapshot.parquet"
    last = None
    if snap.exists():
        try:
            last = (pq.read_schema(snap).metadata or {}).get(b"audit_date", b"").decode() or None
        except (pa.ArrowException, OSError):
            last = None
    return {"dataset": ds, "status": status, "message": message, "last_good_audit": last}


def verdict(results: dict[str, dict]) -> tuple[int, str | None]:
    """The audit's exit code and its one line: 0 when every dataset was audited; 0 and a
    warning line when some have no inputs yet but at least one was audited; 2 and an error line
    when a dataset's inputs are unreadable, or none could be audited."""
    skipped = {ds: r for ds, r in results.items() if r["status"] != AUDITED}
    if not skipped:
        return 0, None
    bad = {ds: r for ds, r in skipped.items() if r["status"] == BAD_INPUTS}
    audited = len(results) - len(skipped)
    shown = bad or skipped
    line = "; ".join(f"{ds}: {r['message']}" for ds, r in shown.items())
    if bad:
        return 2, f"{len(bad)} dataset(s) with unreadable inputs, not audited (the others " \
                  f"were): {line}"
    if not audited:
        return 2, f"no dataset could be audited: {line}"
    return 0, (f"{len(skipped)} of {len(results)} datasets not audited (their last good "
               f"reports stay; see summary.md): {line}")


def _write(i: _Inputs, out: Path) -> dict:
    ds, states, order, previous = i.ds, i.states, i.order, i.previous
    snap = out / ds / "snapshot.parquet"
    result = _summarize(ds, states, i.clips, order, i.found, previous, i.sample)
    write_report(result, out)
    date = result["audit_date"]
    for split in order:
        here = [s for s in states if split in s["splits"] and s["in_sample"]]
        _id_file(out / ds / split / "missing_ids.txt", f"{ds} {split}: ids of the videos known "
                 "not to be usable: unavailable (removed, private, ...), needs_auth, or without "
                 f"audio; audit {date}", sorted(s["video_id"] for s in here if s["gone"]))
        _id_file(out / ds / split / "never_reached_ids.txt", f"{ds} {split}: ids of the videos "
                 "not reached yet: pending (never tried, throttled) or a failure a re-run may "
                 f"fix (network, configuration, this machine); audit {date}",
                 sorted(s["video_id"] for s in here if s["not_reached"]))
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


def _sample_text(sample: dict) -> str:
    """'Sample of 100 of 1,790 listed videos (download.max_videos = 100, splits: val)'."""
    how = [f"download.max_videos = {sample['max_videos']}"] if sample["max_videos"] else []
    how += [f"download.splits = {', '.join(sample['splits'])}"] if sample["splits"] else []
    return f"Sample of {_n(sample['videos'])} of {_n(sample['listed'])} listed videos " \
           f"({'; '.join(how)})"


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
    if r.get("sample"):
        lines += [f"**{_sample_text(r['sample'])}**: every count below is over the sample "
                  "(videos tried at least once included); the manifest's other videos were "
                  "not tried and do not count as missing.", ""]
    lines += [f"| split | {_HEADER[0]}", f"|---|{_HEADER[1]}"]
    lines += [f"| {k} | {_cells(c)} |" for k, c in sp.items()]
    t = sp[TOTAL]
    lines += ["", "Clips covered: clips whose video is available with an audio stream.",
              *(f"- {k}: {c['paper']['note']}" for k, c in sp.items()
                if c["paper"] and c["paper"]["note"]),
              "", f"Not usable: {_n(t['videos_known_gone'])} known gone or without audio "
              f"(`missing_ids.txt`), {_n(t['videos_never_reached'])} not reached yet: pending, "
              "or failed in a way a re-run may fix (`never_reached_ids.txt`)."]
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
    lines += ["", f"Ids: `{ds}/<split>/missing_ids.txt` (known gone), "
              f"`{ds}/<split>/never_reached_ids.txt` (not reached yet), `{ds}/changes/*.txt`."]
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
    """<out>/<ds>.json (the dict), <out>/<ds>.md (readable report), <out>/<ds>.png (chart),
    <out>/status/<ds>.csv (videos by status, all splits: the data of dvc.yaml's plot)."""
    out, ds = Path(out), result["dataset"]
    write_json_atomic(result, out / f"{ds}.json")
    _write_text(_markdown(result), out / f"{ds}.md")
    _chart(result, out / f"{ds}.png")
    by_status = result["splits"][TOTAL]["by_status"]
    _write_text("status,videos\n" + "".join(f"{k},{n}\n" for k, n in by_status.items()),
                out / "status" / f"{ds}.csv")


def write_summary(results: dict[str, dict], out: Path) -> None:
    """<out>/summary.json and summary.md: one row per audited dataset and split (and its
    total), and each dataset's status (audited, missing_inputs, bad_inputs) with its sample,
    or the message and the date of the last good audit whose reports stay."""
    keys = ("videos_listed", "videos_available", "videos_with_audio", "videos_known_gone",
            "videos_never_reached", "clips_listed", "clips_covered", "clip_coverage",
            "videos_in_manifest", "clips_in_manifest")
    audited = {ds: r for ds, r in results.items() if r.get("status", AUDITED) == AUDITED}
    skipped = {ds: r for ds, r in results.items() if ds not in audited}
    rows = [{"dataset": ds, "split": k, "audit_date": r["audit_date"],
             "ledger_found": r["ledger_found"], **{f: c[f] for f in keys},
             "paper": _paper_cell(c["paper"], ours=False) if c["paper"] else None}
            for ds, r in audited.items() for k, c in r["splits"].items()]
    datasets = {ds: {"status": AUDITED, "audit_date": r["audit_date"],
                     "sample": r.get("sample")} if ds in audited
                else {k: r[k] for k in ("status", "message", "last_good_audit")}
                for ds, r in results.items()}
    write_json_atomic({"datasets": datasets, "rows": rows}, Path(out) / "summary.json")
    no_ledger = [ds for ds, r in audited.items() if not r["ledger_found"]]
    samples = [f"{ds}: {_sample_text(r['sample'])}" for ds, r in audited.items()
               if r.get("sample")]
    lines = ["# Availability audit: summary", ""]
    if skipped:
        lines += ["**Not audited this time** (each keeps its last good report and baseline):",
                  "", *(f"- {ds}: {r['status']}: {r['message']} (last good audit: "
                        f"{r['last_good_audit'] or 'none'})" for ds, r in skipped.items()), ""]
    if no_ledger:
        lines += [f"No availability.parquet (every video pending): {', '.join(no_ledger)}.", ""]
    if samples:
        lines += ["Samples (counts are over the sample): " + "; ".join(samples) + ".", ""]
    lines += [f"| dataset | split | {_HEADER[0]}", f"|---|---|{_HEADER[1]}"]
    lines += [f"| {ds} | {k} | {_cells(c)} |" for ds, r in audited.items()
              for k, c in r["splits"].items()]
    _write_text("\n".join(lines) + "\n", Path(out) / "summary.md")

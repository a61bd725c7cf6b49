"""CrossTask: crosstask_release (tasks, video lists, step annotations) -> videos and clips."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import CrossTaskManifestParams
from pipeline.data.datasets.common import read_csv, youtube_url
from pipeline.data.manifest import Manifest, ManifestError, check_video_id, parse_time
from pipeline.data.sources import Sources

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"^[0-9A-Za-z-]+$")  # no "_": it separates task and video in file names
VIDEO_COLUMNS = ["task_id", "youtube_id", "url"]


@dataclass(frozen=True)
class Task:
    """One block of tasks_primary.txt / tasks_related.txt."""

    task_id: str
    name: str
    url: str
    steps: tuple[str, ...]
    kind: str  # "primary" or "related"


def parse(sources: Sources, params: CrossTaskManifestParams) -> Manifest:
    """The CrossTask release: val = annotated primary videos of videos_val.csv, rest train."""
    return parse_folder(sources.get("release"), "crosstask", params.include_related)


def read_tasks(path: Path, kind: str) -> dict[str, Task]:
    """Task blocks (id, name, wikihow URL, number of steps, comma-separated steps, blank line)
    of a tasks_*.txt file -> {task id: Task}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(path, None, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise ManifestError(path, None, None, f"not UTF-8 text: {e}") from None
    tasks: dict[str, Task] = {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block = [s.strip() for s in lines[i:i + 5]]
        line = i + 1  # 1-based line of the task id
        if len(block) < 5 or not all(block):
            raise ManifestError(path, line, None, "truncated task block: expected 5 lines (id, "
                                "name, URL, number of steps, steps)")
        task_id, name, url, n_steps, steps_line = block
        if not TASK_ID.match(task_id):
            raise ManifestError(path, line, "task_id", f"{task_id!r} is not a task id")
        if task_id in tasks:
            raise ManifestError(path, line, "task_id", f"duplicate task id {task_id!r}")
        if not (n_steps.isascii() and n_steps.isdigit()):
            raise ManifestError(path, line + 3, "n_steps", f"expected an integer, got "
                                f"{n_steps!r}")
        steps = tuple(s.strip() for s in steps_line.split(","))
        if len(steps) != int(n_steps) or not all(steps):
            raise ManifestError(path, line + 4, "steps", f"expected {n_steps} non-empty "
                                f"comma-separated steps, got {len(steps)}")
        tasks[task_id] = Task(task_id, name, url, steps, kind)
        i += 5
    return tasks


def read_video_list(path: Path) -> list[tuple[int, str, str]]:
    """(line, task id, YouTube id) per row of videos.csv / videos_val.csv; ids checked."""
    out, seen = [], {}
    for line, row in read_csv(path, VIDEO_COLUMNS, header=False):
        task, vid = row["task_id"], check_video_id(row["youtube_id"], path, line, "youtube_id")
        if (task, vid) in seen:
            raise ManifestError(path, line, "youtube_id", f"duplicate video {vid!r} for task "
                                f"{task!r} (first at row {seen[task, vid]})")
        seen[task, vid] = line
        out.append((line, task, vid))
    return out


def _annotation_files(folder: Path) -> dict[tuple[str, str], Path]:
    """{(task id, video id): path} of annotations/<task>_<video>.csv."""
    if not folder.is_dir():
        raise ManifestError(folder, None, None, "missing annotations folder")
    out = {}
    for p in sorted(folder.glob("*.csv")):
        task, sep, vid = p.stem.partition("_")
        if not sep or not TASK_ID.match(task):
            raise ManifestError(p, None, "file name", "expected <task id>_<YouTube id>.csv")
        out[task, check_video_id(vid, p, None, "file name")] = p
    return out


def read_annotation(path: Path, task: Task) -> list[tuple[int, int, float, float]]:
    """(line, 1-based step, start_s, end_s) per row of one annotation file (step,start,end)."""
    out = []
    for line, row in read_csv(path, ["step", "start", "end"], header=False):
        step = row["step"]
        if not (step.isascii() and step.isdigit()) or not 1 <= int(step) <= len(task.steps):
            raise ManifestError(path, line, "step", f"step {step!r} out of range 1.."
                                f"{len(task.steps)} for task {task.task_id}")
        start = parse_time(row["start"], path, line, "start")
        end = parse_time(row["end"], path, line, "end")
        if not start < end:
            raise ManifestError(path, line, "end", f"start {start} s is not before end {end} s")
        out.append((line, int(step), start, end))
    return out


def parse_folder(root: Path, dataset: str, include_related: bool = True) -> Manifest:
    """A crosstask_release folder -> Manifest with splits train and val.

    Val: the annotated primary-task videos of videos_val.csv. Train: every other video of
    videos.csv (related-task ones only if include_related). Clips: one per annotation row of the
    kept videos, clip_id "<video>:<task>:<row index>", text = the step name."""
    primary = read_tasks(root / "tasks_primary.txt", "primary")
    related = read_tasks(root / "tasks_related.txt", "related")
    both = sorted(primary.keys() & related.keys())
    if both:
        raise ManifestError(root / "tasks_related.txt", None, "task_id",
                            f"task {both[0]!r} is also a primary task")
    tasks = {**primary, **related}
    annotations = _annotation_files(root / "annotations")
    listed = {}  # (task, video) -> (file, line), videos.csv first, then val-only pairs
    val = set()
    for name in ("videos.csv", "videos_val.csv"):
        for line, task, vid in read_video_list(root / name):
            if task not in tasks:
                raise ManifestError(root / name, line, "task_id", f"unknown task {task!r} "
                                    "(not in tasks_primary.txt or tasks_related.txt)")
            listed.setdefault((task, vid), (root / name, line))
            if name == "videos_val.csv":
                val.add((task, vid))
    for key, path in annotations.items():
        if key not in listed:
            raise ManifestError(path, None, "file name", f"annotation for video {key[1]!r} of "
                                f"task {key[0]!r}, which videos.csv does not list")

    m = Manifest(dataset, ("train", "val"),
                 video_extra={"task_id": pa.string(), "task_kind": pa.string()},
                 clip_extra={"task_id": pa.string(), "step": pa.int32()})
    videos: dict[str, dict] = {}
    dropped, repeated = 0, set()
    for (task, vid), (path, line) in listed.items():
        kind = tasks[task].kind
        if (task, vid) in val:
            if kind != "primary" or (task, vid) not in annotations:
                dropped += 1  # held out like the official code, but unusable for evaluation
                continue
            split = "val"
        elif kind == "related" and not include_related:
            continue
        else:
            split = "train"
        if vid in videos:
            repeated.add(vid)
            splits = set(videos[vid]["split"].split(",")) | {split}
            videos[vid]["split"] = ",".join(sorted(splits))
        else:
            videos[vid] = {"video_id": vid, "url": youtube_url(vid), "split": split,
                           "duration_s": None, "_row": f"{path.name}:{line}", "task_id": task,
                           "task_kind": kind}
        if (task, vid) in annotations:
            ann_path = annotations[task, vid]
            for j, (aline, step, start, end) in enumerate(read_annotation(ann_path, tasks[task])):
                row = f"annotations/{ann_path.name}:{aline}"
                m.clips.append({"clip_id": f"{vid}:{task}:{j}", "video_id": vid, "split": split,
                                "start_s": start, "end_s": end, "text": tasks[task].steps[step - 1],
                                "source": row, "_row": row, "task_id": task, "step": step})
    if repeated:
        log.warning("%s: %d videos are listed under several tasks; kept one row per video "
                    "(first task wins for task_id)", root, len(repeated))
    if dropped:
        log.warning("%s: %d videos_val.csv entries are not annotated primary-task videos; left "
                    "out of both splits", root, dropped)
    m.videos.extend(videos.values())
    return m

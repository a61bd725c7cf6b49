"""The data-scale study (thesis Fig. 5-3): pretrain -> fine-tune -> evaluate at several
train.fraction values, each a DVC experiment (`dvc exp run -S train.fraction=F`, one after the
other), then zero-shot and fine-tuned recall against the fraction ->
reports/study/<dataset>.json, .md and .png."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.safety import UserError

log = logging.getLogger(__name__)

SETTINGS = ("zero_shot", "fine_tuned")
DIRECTIONS = ("audio_to_video", "video_to_audio")
KS = (1, 5, 10)
PROTOCOL = "paper"          # the recall file's headline protocol (reports/recall/<ds>.json)
ARROWS = {"audio_to_video": "A->V", "video_to_audio": "V->A"}


class StudyError(UserError):
    """A study that cannot run: no git repo or commit, no DVC project, bad fractions."""


def check_fractions(fractions: list[float]) -> list[float]:
    """-> the fractions sorted; StudyError unless each is in (0, 1] and none repeats."""
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise StudyError(f"fractions {fractions}: each must be in (0, 1] (train.fraction), "
                         "e.g. --fractions 0.3,0.6,1")
    if len(set(fractions)) != len(fractions):
        raise StudyError(f"fractions {fractions}: one is given twice")
    return sorted(fractions)


def exp_name(prefix: str, dataset: str, head: str, fraction: float) -> str:
    """The experiment's name: prefix, dataset, the commit it runs on, the fraction
    (study-demo-1a2b3c4-f0.25). A study re-run on the same commit finds it and reuses it."""
    return f"{prefix}-{dataset}-{head[:7]}-f{fraction:g}"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:
        raise StudyError("git not found: the study runs DVC experiments, which need git "
                         "(install it)") from None


def check_repo(repo: Path) -> str:
    """-> the HEAD commit of `repo`; StudyError unless it is a git repository with a commit
    and a DVC project (what `dvc exp run` needs)."""
    if not Path(repo).is_dir():
        raise StudyError(f"{repo}: not a folder; pass the project folder as --repo")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise StudyError(f"{repo}: not a git repository; DVC experiments need one (`git init`, "
                         "`git add -A`, `git commit`)")
    head = _git(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if head.returncode != 0:
        raise StudyError(f"{repo}: the git repository has no commit yet; DVC experiments start "
                         "from one (`git add -A && git commit -m start`)")
    if not (Path(repo) / ".dvc").is_dir():
        raise StudyError(f"{repo}: not a DVC project (no .dvc folder); run `dvc init` there")
    return head.stdout.strip()


def _dvc(repo: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `repo` with this interpreter's dvc; its output goes to ours unless
    captured."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, text=True,
                          capture_output=capture)


def _warn_untracked(repo: Path) -> None:
    """A temporary experiment runs on a copy of the files git (or DVC) tracks: an untracked
    module a stage imports is not there."""
    lines = _git(repo, "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    untracked = [ln[3:] for ln in lines if ln.startswith("?? ")]
    if untracked:
        log.warning("%d untracked file(s) (%s%s) are not copied into the experiments: `git add` "
                    "those the stages need", len(untracked), ", ".join(untracked[:5]),
                    ", ..." if len(untracked) > 5 else "")


def parse_exp_show(rows: list) -> dict[str, dict]:
    """`dvc exp show --json` (a list of baselines, each with its experiments) -> name ->
    {"rev", "timestamp", "params", "metrics": {file: data or {"error": message}}}."""
    out = {}
    for base in rows:
        for group in base.get("experiments") or []:
            for rev in group.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {path: (m["data"] if "data" in m else
                                  {"error": (m.get("error") or {}).get("msg", "unreadable")})
                           for path, m in (data.get("metrics") or {}).items()}
                name = rev.get("name") or group.get("name")
                if name:
                    out[name] = {"rev": rev.get("rev"), "timestamp": data.get("timestamp"),
                                 "params": data.get("params") or {}, "metrics": metrics,
                                 "error": rev.get("error")}
    return out


def show_experiments(repo: Path) -> dict[str, dict]:
    """The experiments of the current commit, by name (parse_exp_show)."""
    r = _dvc(repo, "exp", "show", "--json", capture=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise StudyError(f"{repo}: `dvc exp show --json` failed ({last})")
    return parse_exp_show(json.loads(r.stdout or "[]"))


def run_study(repo: Path, dataset: str, fractions: list[float], out: Path,
              metrics_file: str | None = None, targets: list[str] | None = None,
              prefix: str = "study", temp: bool = True) -> dict:
    """Runs one DVC experiment per fraction (train.fraction = F; `targets`, default
    evaluate@<dataset>, and the stages before them), one after the other, each in a temporary
    copy of the project (`temp`; else in the workspace, which then holds the last one's
    outputs); an experiment of the same name (same commit and fraction) is reused. Collects
    each one's recall file (`metrics_file`, default reports/recall/<dataset>.json) from
    `dvc exp show` and writes out/<dataset>.json, .md, .png -> collect()'s dict. A failed
    experiment is recorded (status, error) and the others still run."""
    repo = Path(repo)
    fractions = check_fractions(list(fractions))
    head = check_repo(repo)
    metrics_file = metrics_file or f"reports/recall/{dataset}.json"
    targets = list(targets) if targets else [f"evaluate@{dataset}"]
    if temp:
        _warn_untracked(repo)
    known = show_experiments(repo)
    rows = []
    for i, f in enumerate(fractions, 1):
        name = exp_name(prefix, dataset, head, f)
        row = {"fraction": f, "experiment": name, "status": "ok", "error": None}
        if name in known:
            log.info("experiment %d/%d: fraction %g: %s already run on this commit (%s): reusing "
                     "it (`dvc exp remove %s` to run it again)", i, len(fractions), f, name,
                     known[name].get("timestamp"), name)
        else:
            log.info("experiment %d/%d: fraction %g: running %s (dvc exp run%s -S "
                     "train.fraction=%r %s)", i, len(fractions), f, name,
                     " --temp" if temp else "", float(f), " ".join(targets))
            t0 = time.monotonic()
            r = _dvc(repo, "exp", "run", *(["--temp"] if temp else []), "-n", name,
                     "-S", f"train.fraction={float(f)!r}", *targets)
            took = time.monotonic() - t0
            if r.returncode != 0:
                row.update(status="failed", error=f"dvc exp run exited with {r.returncode} "
                                                  "(its output is above)")
                log.error("experiment %d/%d: fraction %g: %s failed after %.0f s", i,
                          len(fractions), f, name, took)
            else:
                log.info("experiment %d/%d: fraction %g: %s done in %.0f s", i, len(fractions),
                         f, name, took)
        rows.append(row)
    shown = show_experiments(repo)
    for row in rows:
        if row["status"] != "ok":
            continue
        exp = shown.get(row["experiment"])
        m = (exp or {}).get("metrics", {}).get(metrics_file)
        if exp is None or m is None or "error" in m:
            why = ("not in `dvc exp show`" if exp is None else
                   f"no {metrics_file} in it" if m is None else f"{metrics_file}: {m['error']}")
            row.update(status="no metrics", error=why)
            continue
        row.update(rev=exp["rev"], recall=m)
    result = collect(dataset, metrics_file, head, rows)
    write_reports(result, Path(out))
    return result


def collect(dataset: str, metrics_file: str, commit: str, rows: list[dict]) -> dict:
    """Per-fraction results ({"fraction", "experiment", "status", "error", "rev"?, "recall"?:
    the recall file's flat dict}) -> the study's dict: dataset, metrics file, commit, and one
    row per fraction (sorted) holding <setting>/<direction>_R@<K> for zero_shot and
    fine_tuned, A->V and V->A, K 1/5/10 (None where missing)."""
    out = []
    for r in sorted(rows, key=lambda r: r["fraction"]):
        recall = r.get("recall") or {}
        row = {k: r.get(k) for k in ("fraction", "experiment", "rev", "status", "error")}
        for s in SETTINGS:
            for d in DIRECTIONS:
                for k in KS:
                    row[f"{s}/{d}_R@{k}"] = recall.get(f"{s}/{PROTOCOL}/{d}_R@{k}")
        out.append(row)
    return {"dataset": dataset, "metrics_file": metrics_file, "commit": commit,
            "protocol": PROTOCOL, "rows": out}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def render_md(result: dict) -> str:
    """The study's table: one row per fraction, R@1/R@5/R@10 (%) per setting and direction."""
    cols = [(s, d) for s in SETTINGS for d in DIRECTIONS]
    head = " | ".join(f"{s.replace('_', '-')} {ARROWS[d]}" for s, d in cols)
    lines = [f"# Data-scale study: {result['dataset']} (thesis Fig. 5-3)", "",
             f"Pretrained on a share of the train videos (train.fraction), then fine-tuned and "
             f"evaluated; R@1/R@5/R@10 in %, {result['protocol']} protocol, from "
             f"`{result['metrics_file']}` of each DVC experiment (commit "
             f"{(result['commit'] or '')[:7]}).", "",
             f"| fraction | experiment | {head} |", "|" + "---|" * (len(cols) + 2)]
    for r in result["rows"]:
        cells = [f"{r['fraction']:g}", f"`{r['experiment']}`"]
        if r["status"] != "ok":
            cells += [f"{r['status']}: {r['error']}"] + [""] * (len(cols) - 1)
        else:
            cells += ["/".join(_pct(r[f"{s}/{d}_R@{k}"]) for k in KS) for s, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Fig. 5-3's layout -> PNG: R@1 and R@10 (%) against the fraction of pretraining videos
    (log x), zero-shot dashed and fine-tuned solid, one panel per direction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(1, len(DIRECTIONS), figsize=(10, 4), dpi=100, sharey=True)
    for ax, d in zip(axes, DIRECTIONS):
        for s, style in zip(SETTINGS, ("--", "-")):
            for k, colour in zip((1, 10), ("tab:blue", "tab:orange")):
                pts = [(100 * r["fraction"], 100 * r[f"{s}/{d}_R@{k}"]) for r in rows
                       if r[f"{s}/{d}_R@{k}"] is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=colour,
                            label=f"{s.replace('_', '-')} R@{k}")
        ax.set_xscale("log")
        xs = [100 * r["fraction"] for r in result["rows"]]
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("pretraining videos, % of the train split (log)")
        ax.set_title(f"{result['dataset']}: {ARROWS[d]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall, %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_reports(result: dict, out: Path) -> None:
    """out/<dataset>.json, .md and .png, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    ds = result["dataset"]
    for name, text in ((f"{ds}.json", json.dumps(result, indent=1) + "\n"),
                       (f"{ds}.md", render_md(result))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    plot(result, out / f"{ds}.png")
    log.info("study of %s: %d of %d fractions ok -> %s", ds,
             sum(r["status"] == "ok" for r in result["rows"]), len(result["rows"]),
             out / f"{ds}.md")

"""The docs check: every command, params key, link and code path in README.md and docs/**/*.md
is checked against the code, so no instruction in the docs goes stale (issue 12).

Nothing is run; each check parses or resolves (a few seconds in all):
- commands in ```bash / ```sh / ```console blocks (console: the lines starting with `$ `) and
  in inline code that starts with a command (`avl ...`, `dvc ...`, `python -m ...`):
  `avl <cmd>`, `python -m stages.<name>`, `torchrun ... -m stages.<name>` and `dask <cmd>` are
  parsed by their own click command (unknown options, missing values and extra arguments fail;
  `--dataset` must name a dataset); `dvc ...` by DVC's own argument parser, with the stages
  named after `repro` / `exp run` in `dvc stage list` (or a foreach group and a dataset named in
  params.yaml or in a docs example) and the keys of `-S key=value` in pipeline/config.py;
  `python -m benchmarks.<name>` options against the benchmark's argparse calls;
  `python -m pytest` paths, test names and markers; `bash setup.sh` options; `bash
  benchmarks/<name>.sh` (the script exists and takes no arguments). Plain shell
  (git, ls, cat, ...) is allowed as is; any other program fails until it gets a check here.
- ```yaml blocks are params snippets: merged into params.yaml and loaded by pipeline/config.py.
- inline `section.key` and `section.key: value` name a key of pipeline/config.py (and the
  value is one it accepts).
- ```python blocks compile and their imports resolve.
- relative links (and #anchors) point to files and headings that exist; code paths in inline
  code (`pipeline/...`, `tests/x.py::test_y`) exist.
- the README keeps the two commands, its test command is .ci/run's, and the params reference
  (docs/reference/params.md) is the table generated from pipeline/config.py:
  `python -m tests.test_docs` rewrites it.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import io
import json
import logging
import re
import shlex
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Iterator, Literal, NamedTuple

import click
import pytest
import yaml

from pipeline import config

ROOT = Path(__file__).resolve().parents[1]
PARAMS_REF = ROOT / "docs" / "reference" / "params.md"
PARAMS_START, PARAMS_END = "<!-- params:start -->", "<!-- params:end -->"
DEMO_COMMAND = "bash setup.sh && . .venv/bin/activate && dvc repro"
TEST_COMMAND = "bash setup.sh --test && . .venv/bin/activate && python -m pytest"

SHELL_LANGS = {"bash", "sh", "shell", "console"}
# programs that need no check: plain shell, and editors of files the docs name
PLAIN = {"git", "ls", "cat", ".", "source", "cd", "mkdir", "cp", "mv", "export", "echo", "pip",
         "nvidia-smi", "head", "tail", "du", "df", "sha256sum", "tree"}
# inline code starting with one of these is a command and checked as one
INLINE_PROGRAMS = ("avl", "dvc", "python", "python3", "torchrun", "bash", "dask")
CONTROL = {"&&", "||", ";", "|"}
# file name endings: `demo.md` is a file, not the params key demo.md
FILE_ENDINGS = {"py", "md", "json", "yaml", "yml", "png", "html", "csv", "parquet", "h5", "pt",
                "pth", "txt", "jsonl", "lock", "dvc", "sh", "toml", "ini", "zip", "mp4", "avi"}
CODE_DIRS = ("pipeline/", "stages/", "models/", "tests/", "benchmarks/", ".ci/", "docs/")
TOP_FILES = {"params.yaml", "dvc.yaml", "dvc.lock", "setup.sh", "requirements.txt",
             "requirements-test.txt", "pyproject.toml", "pytest.ini", "LICENSE", "README.md",
             ".dvcignore", ".gitignore"}


class Where(NamedTuple):
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


# --------------------------------------------------------------------------- reading the docs


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


class Block(NamedTuple):
    lang: str
    line: int          # line number of the first line inside the fence
    lines: list[str]


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """Fenced blocks, and the other lines (numbered from 1) with their line numbers."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    fence: tuple[str, str, int, list[str]] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and m:
            fence = (m.group(1), m.group(2).lower(), n + 1, [])
        elif fence is not None and line.strip().startswith(fence[0]) and \
                line.strip() == line.strip()[0] * len(line.strip()):
            blocks.append(Block(fence[1], fence[2], fence[3]))
            fence = None
        elif fence is not None:
            fence[3].append(line)
        else:
            prose.append((n, line))
    assert fence is None, f"unclosed ``` fence from line {fence[2] - 1}"
    return blocks, prose


def inline_code(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The `code spans` of the prose lines (single or double backticks)."""
    for n, line in prose:
        for m in re.finditer(r"(`+)(.+?)\1", line):
            yield n, m.group(2).strip()


class Doc(NamedTuple):
    path: Path
    text: str
    blocks: list[Block]
    prose: list[tuple[int, str]]


@functools.cache
def docs() -> tuple[Doc, ...]:
    out = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        blocks, prose = split_markdown(text)
        out.append(Doc(path, text, blocks, prose))
    return tuple(out)


def shell_commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """(line, argv) of every command in a shell block: continuation lines joined, comments
    dropped, `&&` / `||` / `;` / `|` chains split."""
    pending, start = "", block.line
    for i, raw in enumerate(block.lines):
        n = block.line + i
        line = raw.rstrip()
        if block.lang == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue   # output
            line = line.lstrip()[2:]
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        yield from ((start, argv) for argv in split_chain(line))


def split_chain(line: str) -> list[list[str]]:
    tokens = shlex.split(line, comments=True)
    out: list[list[str]] = [[]]
    for t in tokens:
        if t in CONTROL:
            out.append([])
        else:
            out[-1].append(t)
    return [argv for argv in out if argv]


def is_placeholder(s: str) -> bool:
    return bool(re.search(r"<[^<>]+>|\.\.\.", s))


# --------------------------------------------------------------------------- what the code knows


@functools.cache
def params_data() -> dict:
    return yaml.load((ROOT / "params.yaml").read_text(), Loader=config._Loader)


@functools.cache
def example_datasets() -> dict[str, str]:
    """Dataset name -> kind: params.yaml's, the built-in kinds, and those declared in the docs'
    yaml examples (a command may name a dataset an example adds)."""
    names = {k: k for k in config.DATASETS}
    names.update(params_data().get("datasets") or {})
    for doc in docs():
        for block in doc.blocks:
            if block.lang == "yaml":
                data = yaml.safe_load("\n".join(block.lines)) or {}
                if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
                    names.update({str(k): str(v) for k, v in data["datasets"].items()})
    return names


@functools.cache
def dvc_stages() -> frozenset[str]:
    p = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"`dvc stage list` failed: {p.stderr}"
    return frozenset(p.stdout.split())


@functools.cache
def foreach_groups() -> frozenset[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return frozenset(name for name, s in stages.items() if "foreach" in s)


def check_stage(target: str) -> str | None:
    if target in dvc_stages() or is_placeholder(target) or (ROOT / target).exists():
        return None
    group, at, key = target.partition("@")
    if at and group in foreach_groups() and (is_placeholder(key) or key in example_datasets()):
        return None
    return (f"no DVC stage {target!r} (dvc stage list: {', '.join(sorted(dvc_stages()))}; "
            "foreach groups take a dataset of params.yaml or of a docs example)")


def check_dataset_name(name: str | None) -> str | None:
    if name is None or is_placeholder(name) or name in example_datasets():
        return None
    return f"dataset {name!r} is neither in params.yaml `datasets` nor in a docs example"


# --------------------------------------------------------------------------- params keys


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def resolve_key(key: str) -> tuple[typing.Any, dict] | str:
    """(annotation, field metadata) of params key `key` (dotted; `<name>` parts match any
    name), or an error line."""
    tp: typing.Any = config.Params
    meta: dict = {}
    parts = key.split(".")
    hints = typing.get_type_hints
    for i, part in enumerate(parts):
        so_far = ".".join(parts[:i + 1])
        if tp is config.ManifestSection and part not in _fields(tp):
            kind = example_datasets().get(part)
            if is_placeholder(part):   # manifest.<name>.x: a key of any dataset kind
                rest = parts[i + 1:]
                if not rest:
                    return tp, {}
                classes = [hints(config.ManifestSection)[f] for f in _fields(tp)] + \
                    list(config.OWN_PARAMS.values())
                if any(rest[0] in _fields(c) for c in classes) and len(rest) == 1:
                    return typing.Any, {}
                return f"{key}: no dataset kind has manifest key {rest[0]!r}"
            if kind not in config.OWN_PARAMS:
                return f"{so_far}: no such manifest entry (built-in: {', '.join(_fields(tp))}; " \
                       "own datasets need `<name>: custom|lsmdc` in a datasets example)"
            tp, meta = config.OWN_PARAMS[kind], {}
            continue
        if dataclasses.is_dataclass(tp):
            known = _fields(tp)
            if part not in known:
                return f"{so_far}: unknown params key (known: {', '.join(known)})"
            tp, meta = hints(tp)[part], dict(known[part].metadata)
        elif typing.get_origin(tp) is dict:
            tp, meta = typing.get_args(tp)[1], {}
        else:
            return f"{so_far}: {'.'.join(parts[:i])} is a value, not a section"
    return tp, meta


def check_param(key: str, value: str | None) -> str | None:
    """An error line when `key` is not a params key or `value` (YAML text) is not accepted."""
    resolved = resolve_key(key)
    if isinstance(resolved, str):
        return resolved
    tp, meta = resolved
    if value is None or is_placeholder(key) or is_placeholder(value) or tp is typing.Any:
        return None
    try:
        v = yaml.load(value, Loader=config._Loader)
        v = config._coerce(v, tp, key)
        for bound, ok in (("ge", lambda b: v >= b), ("le", lambda b: v <= b),
                          ("gt", lambda b: v > b)):
            b = meta.get(bound)
            if b is not None and isinstance(v, (int, float)) and not ok(b):
                return f"{key}: {value} is out of bounds ({bound} {b})"
    except (config.ParamsError, yaml.YAMLError) as e:
        return f"{key}: {value!r} is refused: {e}"
    return None


SECTIONS = frozenset(_fields(config.Params))
KEY_SPAN = re.compile(r"^(?P<key>[a-z][a-z0-9_]*(?:\.(?:[a-z0-9_-]+|<[^<>]+>))*)"
                      r"(?::\s+(?P<value>.+))?$")


def param_span(span: str) -> tuple[str, str | None] | None:
    """(key, value) when inline code `span` is a params key (`download.max_videos`) or an
    assignment (`download.verify: size`, `datasets: {demo: demo}`); else None."""
    m = KEY_SPAN.match(span)
    if not m:
        return None
    key, value = m.group("key"), m.group("value")
    parts = key.split(".")
    if parts[0] not in SECTIONS or (len(parts) == 1 and value is None):
        return None
    if len(parts) == 2 and parts[-1] in FILE_ENDINGS:
        return None   # a file name such as demo.md
    return key, value


def merged(base: dict, snippet: dict) -> dict:
    """`base` with `snippet` merged in: mappings merged key by key (so a `datasets` snippet
    adds datasets), everything else replaced."""
    out = dict(base)
    for k, v in snippet.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def check_params_snippet(text: str) -> str | None:
    """A ```yaml block: params.yaml with the snippet merged in must load."""
    try:
        snippet = yaml.load(text, Loader=config._Loader)
    except yaml.YAMLError as e:
        return f"not valid YAML: {' '.join(str(e).split())}"
    if not isinstance(snippet, dict):
        return "a yaml block is a params snippet: a mapping of params.yaml sections"
    unknown = set(snippet) - SECTIONS
    if unknown:
        return f"unknown params section(s) {sorted(unknown)} (known: {', '.join(SECTIONS)})"
    try:
        config._with_own_entries(merged(params_data(), snippet))
    except config.ParamsError as e:
        return f"params.yaml with this snippet is refused: {e}"
    return None


# --------------------------------------------------------------------------- commands


def check_click(cmd: click.Command, name: str, args: list[str]) -> str | None:
    """Parses `args` with click command `cmd` without running it; a group's first argument
    names its command (`avl <command> ...` with a placeholder: every command takes the rest)."""
    if isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub_name, rest = args[0], args[1:]
        ctx = click.Context(cmd, info_name=name)
        if is_placeholder(sub_name):
            errors = [check_click(cmd.get_command(ctx, s), f"{name} {s}", rest)
                      for s in cmd.list_commands(ctx)]
            return next((e for e in errors if e), None)
        sub = cmd.get_command(ctx, sub_name)
        if sub is None:
            return f"`{name}` has no command {sub_name!r} (commands: " \
                   f"{', '.join(cmd.list_commands(ctx))})"
        return check_click(sub, f"{name} {sub_name}", rest)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ctx = cmd.make_context(name, list(args))
    except click.exceptions.Exit:
        return None   # --help / --version
    except click.ClickException as e:
        return f"`{name}` refuses {shlex.join(args)!r}: {e.format_message()}"
    for key in ("dataset", "name"):
        if isinstance(ctx.params.get(key), str):
            if err := check_dataset_name(ctx.params[key]):
                return err
    return None


def stage_cli(module: str) -> click.Command | str:
    if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
        return f"no module {module} ({module.replace('.', '/')}.py)"
    cli = getattr(importlib.import_module(module), "cli", None)
    return cli if isinstance(cli, click.Command) else f"{module} has no click command `cli`"


def check_stage_module(module: str, args: list[str]) -> str | None:
    if is_placeholder(module):   # python -m stages.<name> --help: every stage module
        names = sorted(p.stem for p in (ROOT / "stages").glob("*.py")
                       if p.stem not in ("__init__", "common"))
        errors = [check_stage_module(f"stages.{n}", args) for n in names]
        return next((e for e in errors if e), None)
    cli = stage_cli(module)
    return cli if isinstance(cli, str) else check_click(cli, f"python -m {module}", args)


def argparse_options(path: Path) -> set[str]:
    """The option strings of every add_argument call in a module (read, not imported: the
    benchmarks import torch)."""
    opts = {"-h", "--help"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            opts |= {a.value for a in node.args if isinstance(a, ast.Constant)
                     and isinstance(a.value, str) and a.value.startswith("-")}
    return opts


def check_benchmark(module: str, args: list[str]) -> str | None:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return f"no benchmark module {module}"
    known = argparse_options(path)
    bad = [a.split("=")[0] for a in args if a.startswith("-") and a.split("=")[0] not in known]
    return f"{module} has no option {bad[0]} (options: {', '.join(sorted(known))})" if bad \
        else None


@functools.cache
def pytest_markers() -> frozenset[str]:
    text = (ROOT / "pytest.ini").read_text()
    return frozenset(re.findall(r"^\s+(\w+):", text.split("markers", 1)[1], re.M))


def check_pytest(args: list[str]) -> str | None:
    it = iter(args)
    for a in it:
        if a == "-m":
            expr = next(it, "")
            bad = [w for w in re.findall(r"\w+", expr) if w not in ("and", "or", "not")
                   and w not in pytest_markers()]
            if bad:
                return f"pytest marker {bad[0]!r} is not in pytest.ini"
        elif a == "-k":
            next(it, None)
        elif not a.startswith("-"):
            if err := check_code_path(a):
                return err
    return None


def check_python(argv: list[str]) -> str | None:
    if argv[1:2] == ["-c"]:
        return None   # a line of Python, nothing of ours to check
    if len(argv) < 3 or argv[1] != "-m":
        return f"`{shlex.join(argv)}`: only `python -m <module>` commands are checked"
    module, args = argv[2], argv[3:]
    if module.startswith("stages."):
        return check_stage_module(module, args)
    if module.startswith("benchmarks."):
        return check_benchmark(module, args)
    if module == "pytest":
        return check_pytest(args)
    if module == "tests.test_docs" and not args:
        return None
    if module == "dvc":
        return check_dvc(args)
    return f"`python -m {module}`: no check for this module (tests/test_docs.py)"


def check_torchrun(argv: list[str]) -> str | None:
    if "-m" not in argv:
        return "torchrun without -m stages.<name>"
    i = argv.index("-m")
    return check_stage_module(argv[i + 1], argv[i + 2:])


def check_avl(argv: list[str]) -> str | None:
    from pipeline.cli import cli
    return check_click(cli, "avl", argv[1:])


def check_dask(argv: list[str]) -> str | None:
    if len(argv) < 2:
        return None
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="dask_cli")}
    if argv[1] not in eps:
        return f"`dask {argv[1]}`: no such dask command (installed: {', '.join(sorted(eps))})"
    return check_click(eps[argv[1]].load(), f"dask {argv[1]}", argv[2:])


def check_setup(argv: list[str]) -> str | None:
    if len(argv) > 1 and re.fullmatch(r"benchmarks/[\w-]+\.sh", argv[1]):
        # a prepared benchmark script (benchmarks/gpu_check.sh): settings come from the
        # environment (VAR=value prefixes), not arguments
        if not (ROOT / argv[1]).is_file():
            return f"{argv[1]} does not exist"
        return f"{argv[1]} takes no arguments (settings are environment variables)" \
            if argv[2:] else None
    if argv[1:2] != ["setup.sh"]:
        return f"`{shlex.join(argv)}`: only `bash setup.sh` and `bash benchmarks/<name>.sh` " \
               "are checked"
    known = set(re.findall(r'"(--[a-z-]+)"', (ROOT / "setup.sh").read_text()))
    bad = [a for a in argv[2:] if a not in known]
    return f"setup.sh has no option {bad[0]} (options: {', '.join(sorted(known))})" if bad \
        else None


def check_dvc(args: list[str]) -> str | None:
    from dvc.cli import DvcParserError, parse_args
    said: list[str] = []   # DVC's parser logs its complaint, then prints the usage
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    log = logging.getLogger("dvc.cli.parser")
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ns = parse_args(list(args))
    except (DvcParserError, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            return None   # --help
        return f"dvc refuses {shlex.join(args)!r}: {said[-1] if said else 'parser error'}"
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    targets = list(getattr(ns, "targets", None) or []) if args[:1] == ["repro"] or \
        args[:2] == ["exp", "run"] else []
    for t in targets:
        if err := check_stage(t):
            return err
    if args[:1] == ["repro"] and "audit" in targets and not ns.single_item:
        return "`dvc repro audit` re-runs every download stage first: write `dvc repro -s audit`"
    for setting in getattr(ns, "set_param", None) or []:
        key, eq, value = setting.partition("=")
        if not eq:
            return f"-S {setting!r}: expected key=value"
        if err := check_param(key, value):
            return err
    return None


CHECKS = {"avl": check_avl, "dvc": lambda argv: check_dvc(argv[1:]), "python": check_python,
          "python3": check_python, "torchrun": check_torchrun, "dask": check_dask,
          "bash": check_setup}


def mention(argv: list[str]) -> list[str]:
    """Inline code that names a command without running it (`avl`, `avl finetune`,
    `python -m stages.train`) is checked as that command's --help: the command must exist."""
    if argv[0] in ("avl", "dvc") and len(argv) <= 2 or \
            argv[0].startswith("python") and argv[1:2] == ["-m"] and len(argv) == 3 and \
            argv[2].startswith("stages."):
        return [*argv, "--help"]
    return argv


def check_command(argv: list[str]) -> str | None:
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]   # VAR=value prefixes
    if not argv:
        return None
    if argv[0] in PLAIN:
        return None
    if argv[0] in CHECKS:
        return CHECKS[argv[0]](argv)
    return f"`{argv[0]}`: no check for this program (add one to tests/test_docs.py, or use a " \
           "program of PLAIN)"


# --------------------------------------------------------------------------- paths and links


def check_code_path(span: str) -> str | None:
    """`pipeline/x.py`, `tests/test_x.py::test_y`, `params.yaml`: the file (and test) exist."""
    path, _, test = span.partition("::")
    if not (ROOT / path.rstrip("/")).exists():
        return f"{path} does not exist"
    if test and not re.search(rf"^\s*(async\s+)?def {re.escape(test.split('[')[0])}\(",
                              (ROOT / path).read_text(), re.M):
        return f"{path} has no test {test}"
    return None


def is_code_path(span: str) -> bool:
    if " " in span or is_placeholder(span) or any(c in span for c in "*{}?"):
        return False
    return span.startswith(CODE_DIRS) or span in TOP_FILES


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"`|\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    blocks, prose = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return frozenset(out)


LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def check_link(doc: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # https:, mailto:
        return None
    file, _, anchor = target.partition("#")
    dest = (doc.parent / file).resolve() if file else doc
    if not dest.exists():
        shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
        return f"link to {target}: {shown} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"link to {target}: no heading with anchor #{anchor} in {dest.name}"
    return None


def check_python_block(text: str) -> str | None:
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return f"python block does not compile: {e}"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            mod = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(mod, a.name)]
            if missing:
                return f"{node.module} has no {missing[0]}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                importlib.import_module(a.name)
    return None


# --------------------------------------------------------------------------- collecting


def all_problems() -> list[str]:
    """Every problem in the docs, one line each, `file:line: what`."""
    problems: list[str] = []
    for doc in docs():
        def add(line: int, err: str | None) -> None:
            if err:
                problems.append(f"{Where(doc.path, line)}: {err}")

        for block in doc.blocks:
            text = "\n".join(block.lines)
            if block.lang in SHELL_LANGS:
                try:
                    for line, argv in shell_commands(block):
                        add(line, check_command(argv))
                except ValueError as e:   # shlex: an unclosed quote
                    add(block.line, f"shell block does not parse: {e}")
            elif block.lang == "yaml":
                add(block.line, check_params_snippet(text))
            elif block.lang == "python":
                add(block.line, check_python_block(text))
        for line, span in inline_code(doc.prose):
            first = span.split(" ", 1)[0]
            if first in INLINE_PROGRAMS and (" " in span or first in ("avl", "dvc")):
                try:
                    for argv in split_chain(span):
                        add(line, check_command(mention(argv)))
                except ValueError as e:
                    add(line, f"inline command does not parse: {e}")
            elif (kv := param_span(span)) is not None:
                add(line, check_param(*kv))
            elif is_code_path(span):
                add(line, check_code_path(span))
        for line, text in doc.prose:
            for m in LINK.finditer(re.sub(r"`[^`]*`", "", text)):
                add(line, check_link(doc.path, m.group(1)))
    return problems


# --------------------------------------------------------------------------- params reference


def _type_name(tp: typing.Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{c}`" for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "null"
                           for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping {_type_name(k)} -> {_type_name(v)}"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(value):
        return ""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = {"true": "true", "false": "false"}.get(text, text)
    return f"`{text}`" if text else '`""`'


def _bounds(meta: dict) -> str:
    parts = [f"{sym} {meta[k]:g}" for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="))
             if meta.get(k) is not None]
    return ", ".join(parts)


def _rows(cls: type, prefix: str) -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    for name, f in _fields(cls).items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            continue
        allowed = ", ".join(filter(None, [_type_name(tp), _bounds(dict(f.metadata))]))
        doc = f.metadata["doc"].replace("|", "\\|")
        yield f"| `{prefix}.{name}` | {_default(f)} | {allowed} | {doc} |"


def _section(cls: type, prefix: str, title: str | None = None) -> list[str]:
    out = [f"### {title or prefix}", "", " ".join((cls.__doc__ or "").split()), "",
           "| key | default | type, bounds | meaning |", "|---|---|---|---|", *_rows(cls, prefix),
           ""]
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        if dataclasses.is_dataclass(hints[name]) and cls is not config.ManifestSection:
            out += _section(hints[name], f"{prefix}.{name}")
    return out


def _entries(tp: typing.Any) -> type | None:
    """The dataclass of a section that maps names to settings (dict[str, X]), else None."""
    if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
        return typing.get_args(tp)[1]
    return None


def params_reference() -> str:
    """The params tables, generated from pipeline/config.py's dataclasses."""
    hints = typing.get_type_hints(config.Params)
    f = _fields(config.Params)["datasets"]
    out = ["### datasets", "", f"{f.metadata['doc']}. Kinds: "
           f"{', '.join(f'`{k}`' for k in config.KINDS)}; default {_default(f)}.", ""]
    for name in _fields(config.Params):
        tp = hints[name]
        if name == "manifest":
            mhints = typing.get_type_hints(config.ManifestSection)
            for ds in _fields(config.ManifestSection):
                out += _section(mhints[ds], f"manifest.{ds}")
            for kind, cls in config.OWN_PARAMS.items():
                out += _section(cls, "manifest.<name>", f"`manifest.<name>` (kind {kind})")
        elif dataclasses.is_dataclass(tp):
            out += _section(tp, name)
        elif _entries(tp):    # name -> settings (demo_language.<name>)
            out += _section(_entries(tp), f"{name}.<name>")
    return "\n".join(out).rstrip() + "\n"


def write_params_reference() -> None:
    text = PARAMS_REF.read_text(encoding="utf-8")
    head, _, rest = text.partition(PARAMS_START)
    _, _, tail = rest.partition(PARAMS_END)
    PARAMS_REF.write_text(f"{head}{PARAMS_START}\n{params_reference()}{PARAMS_END}{tail}",
                          encoding="utf-8")


# --------------------------------------------------------------------------- tests


def test_every_docs_command_key_link_and_path_checks_out():
    problems = all_problems()
    assert not problems, f"{len(problems)} stale or unchecked item(s) in the docs:\n" + \
        "\n".join(problems)


def test_docs_have_commands_to_check():
    """The check is not vacuous: the docs hold commands of every kind it checks."""
    programs = set()
    for doc in docs():
        for block in doc.blocks:
            if block.lang in SHELL_LANGS:
                programs |= {argv[0] for _, argv in shell_commands(block)}
    assert {"avl", "dvc", "python", "bash"} <= programs
    assert len(docs()) >= 10


def test_readme_keeps_the_two_commands_and_ci_runs_the_test_command():
    readme = docs()[0]
    lines = {ln.split("#")[0].strip() for b in readme.blocks if b.lang in SHELL_LANGS
             for ln in b.lines}
    assert DEMO_COMMAND in lines and TEST_COMMAND in lines
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == TEST_COMMAND


def test_readme_names_the_set_up_section_requirements_point_to():
    """requirements.txt says: see README "Set-up"."""
    if 'README "Set-up"' in (ROOT / "requirements.txt").read_text():
        assert "set-up" in anchors(ROOT / "README.md")


def test_params_reference_is_generated_from_config():
    text = PARAMS_REF.read_text(encoding="utf-8")
    assert PARAMS_START in text and PARAMS_END in text
    current = text.split(PARAMS_START, 1)[1].split(PARAMS_END, 1)[0].strip()
    assert current == params_reference().strip(), \
        "docs/reference/params.md is out of date with pipeline/config.py: run " \
        "`python -m tests.test_docs` to regenerate it"


def test_params_reference_lists_every_key():
    text = PARAMS_REF.read_text(encoding="utf-8")
    for section in SECTIONS - {"datasets", "manifest"}:
        cls = typing.get_type_hints(config.Params)[section]
        prefix = f"{section}.<name>" if _entries(cls) else section
        for name in _fields(_entries(cls) or cls):
            assert f"`{prefix}.{name}`" in text or f"### {prefix}.{name}" in text


def test_stages_reference_names_every_command_and_stage():
    text = (ROOT / "docs" / "reference" / "stages.md").read_text(encoding="utf-8")
    from pipeline.cli import COMMANDS
    for name in COMMANDS:
        assert f"avl {name}" in text, f"docs/reference/stages.md does not describe avl {name}"
    for stage in {s.split("@")[0] for s in dvc_stages()}:
        assert f"`{stage}" in text, f"docs/reference/stages.md does not describe stage {stage}"


# the checker itself: each kind of stale item is caught (a check that cannot fail is no check)

@pytest.mark.parametrize("argv, expected", [
    (["avl", "download", "--dataset", "demo", "--bogus"], "No such option"),
    (["avl", "nosuch"], "no command"),
    (["avl", "download"], "--dataset"),
    (["avl", "download", "--dataset", "nosuchdataset"], "nosuchdataset"),
    (["avl", "<command>", "--bogus"], "No such option"),
    (["python", "-m", "stages.download", "--dataset", "demo", "--recheck"], "No such option"),
    (["python", "-m", "stages.nosuch"], "no module"),
    (["python", "-m", "benchmarks.extract", "--gpu"], "no option --gpu"),
    (["python", "-m", "pytest", "tests/test_nosuch.py"], "does not exist"),
    (["python", "-m", "pytest", "tests/test_docs.py::test_nosuch"], "no test"),
    (["python", "-m", "pytest", "-m", "veryslow"], "marker"),
    (["dvc", "repro", "--bogus"], "unrecognized"),
    (["dvc", "nosuch"], "dvc refuses"),
    (["dvc", "repro", "nosuchstage"], "no DVC stage"),
    (["dvc", "repro", "nosuch@demo"], "no DVC stage"),
    (["dvc", "repro", "extract@nosuchdataset"], "no DVC stage"),
    (["dvc", "repro", "audit"], "-s audit"),
    (["dvc", "exp", "run", "-S", "evaluate.bacth=32"], "unknown params key"),
    (["dvc", "exp", "run", "-S", "evaluate.batch=0"], "out of bounds"),
    (["torchrun", "-m", "stages.train", "--bogus"], "No such option"),
    (["dask", "nosuch"], "no such dask command"),
    (["dask", "scheduler", "--bogus-option"], "No such option"),
    (["bash", "setup.sh", "--gpu"], "no option"),
    (["bash", "benchmarks/nosuch.sh"], "does not exist"),
    (["bash", "benchmarks/gpu_check.sh", "--quick"], "takes no arguments"),
    (["bash", "run.sh"], "only `bash setup.sh`"),
    (["rm", "-rf", "data"], "no check for this program"),
])
def test_checker_catches_stale_commands(argv, expected):
    err = check_command(argv)
    assert err is not None and expected in err, err


@pytest.mark.parametrize("argv", [
    ["avl", "--help"], ["avl", "<command>", "--help"], ["avl", "sources", "youcook2"],
    ["avl", "evaluate", "--dataset", "demo"], ["python", "-m", "stages.<name>", "--help"],
    ["dvc", "repro", "-s", "audit"], ["dvc", "repro", "download@youcook2"],
    ["dvc", "exp", "run", "-S", "evaluate.batch=32"], ["bash", "setup.sh", "--test"],
    ["OUT=/tmp/x", "DEVICE=cpu", "bash", "benchmarks/gpu_check.sh"],
    ["CUDA_VISIBLE_DEVICES=0", "dask", "worker", "tcp://host:8786"],
])
def test_checker_accepts_current_commands(argv):
    assert check_command(argv) is None


@pytest.mark.parametrize("span, expected", [
    ("download.max_video", "unknown params key"),
    ("train.model.headd", "unknown params key"),
    ("download.verify: md5", "refused"),
    ("datasets: [demo, youcook2]", "refused"),
    ("train.epochs: 0", "out of bounds"),
    ("manifest.nosuch.media", "no such manifest entry"),
    ("manifest.<name>.nosuch", "no dataset kind"),
])
def test_checker_catches_stale_params(span, expected):
    kv = param_span(span)
    assert kv is not None
    err = check_param(*kv)
    assert err is not None and expected in err, err


def test_checker_catches_bad_snippets_links_paths_and_imports():
    assert "refused" in check_params_snippet("datasets: [demo]\n")
    assert "unknown params section" in check_params_snippet("downlaod:\n  max_videos: 5\n")
    assert check_params_snippet("download:\n  max_videos: 50\n") is None
    assert "does not exist" in check_link(ROOT / "README.md", "docs/nosuch.md")
    assert "no heading" in check_link(ROOT / "README.md", "README.md#no-such-heading")
    assert "does not exist" in check_code_path("pipeline/download.py")
    with pytest.raises(ModuleNotFoundError):
        check_python_block("from pipeline.nosuch import x\n")
    assert "has no" in check_python_block("from pipeline.features.store import Nope\n")
    assert param_span("demo.md") is None and param_span("reports/recall/demo.json") is None


if __name__ == "__main__":   # python -m tests.test_docs: regenerate the params reference
    write_params_reference()
    print(f"wrote {PARAMS_REF.relative_to(ROOT)}")

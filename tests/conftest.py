"""Shared fixtures: the project root, the real annotation files, local HTTP servers."""
from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def copy_project(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked, plus untracked ones git does not
    ignore) copied to `dest`; skips the test when git is missing."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


# the opt-in German demo and its cascade, as docs/guide/transfer.md tells a user to add it
GERMAN_DEMO = {
    "datasets": {"demo_de": "custom"},
    "demo_language": {"demo_de": {"language": "de", "n_videos": 48, "n_concepts": 10,
                                  "min_duration_s": 10.0, "max_duration_s": 16.0,
                                  "segments_per_video": 3, "frame_size": "320x240", "fps": 30,
                                  "seed": 1, "workers": 2}},
    "manifest": {"demo_de": {"media": "media", "annotations": "segments.csv",
                             "extensions": ["mp4"]}},
    "segment": {"datasets": ["demo_de"]},
    "finetune": {"datasets": ["demo", "demo_de"]},
    "transfer": {"targets": {"demo_de": "demo"}}}


def with_german_demo(data: dict) -> dict:
    """Shipped params (a dict) with GERMAN_DEMO merged in (mappings merged, lists replaced)."""
    for section, entries in GERMAN_DEMO.items():
        for key, value in entries.items():
            if isinstance(data[section].get(key), dict) and isinstance(value, dict):
                data[section][key].update(value)
            else:
                data[section][key] = value
    return data


@pytest.fixture(scope="session")
def tiny_mp4(tmp_path_factory) -> bytes:
    """The bytes of a 1 s, 32x24 mp4 with a sine tone: media for download tests."""
    out = tmp_path_factory.mktemp("media") / "x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=32x24:rate=2", "-f", "lavfi", "-i", "sine", "-t", "1",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(out)], check=True,
                   timeout=60)
    return out.read_bytes()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real YouCook2 / MSR-VTT annotation files), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        status, body, headers = self.routes.get(self.path, (404, b"not found", {}))
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A server on 127.0.0.1; set routes as {path: (status, body, headers)}. Yields (base, routes)."""
    routes: dict = {}
    handler = type("H", (_Handler,), {"routes": routes})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", routes
    finally:
        srv.shutdown()
        srv.server_close()

"""Running one benchmark step in a fresh process (its own peak RSS, no state from the driver)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(module: str, argv: list[str], timeout_s: float) -> dict:
    """Runs `python -m <module> <argv> --result FILE` from the project root -> the JSON the
    child wrote to FILE, or {"error", "stderr_tail"} when it failed or timed out."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    try:
        proc = subprocess.run([sys.executable, "-m", module, *argv, "--result", str(result)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    finally:
        result.unlink(missing_ok=True)

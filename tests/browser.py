"""Test helper: load an HTML page in headless Chromium and count, from inside the page after
load, the images that decoded and the audio players whose metadata loaded.

The page is copied to a temp folder with a small script injected before </body>: after the
`load` event it waits for every <audio> to fire `loadedmetadata` or `error` (at most
WAIT_MS), then appends <pre id=render-check-result> holding the counts as JSON, which
`chromium --dump-dom` prints. --virtual-time-budget lets Chromium run the page's timers and
media loading without waiting for real time (measured: audio metadata does load under it)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WAIT_MS = 8000
SCRIPT = """<script>(function(){
function report(){
 var imgs=[].slice.call(document.images), auds=[].slice.call(document.querySelectorAll('audio'));
 var r={img_total:imgs.length,
  img_ok:imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length,
  audio_total:auds.length,
  audio_ok:auds.filter(function(a){return !a.error&&a.readyState>=1;}).length,
  audio_states:auds.map(function(a){return [a.readyState,a.error?a.error.code:0];})};
 var p=document.createElement('pre'); p.id='render-check-result';
 p.textContent=JSON.stringify(r); document.body.appendChild(p);
}
window.addEventListener('load',function(){
 var done=false; function fin(){if(!done){done=true;report();}}
 var pending=[].slice.call(document.querySelectorAll('audio')).filter(function(a){
  return !a.error&&a.readyState<1;});
 var left=pending.length; if(!left){fin();return;}
 pending.forEach(function(a){var f=function(){if(--left<=0)fin();};
  a.addEventListener('loadedmetadata',f,{once:true});a.addEventListener('error',f,{once:true});});
 setTimeout(fin,%d);
});})();</script>""" % WAIT_MS
RESULT = re.compile(r'<pre id="render-check-result">(.*?)</pre>', re.S)


def chromium_path() -> str | None:
    """The first Chromium/Chrome binary on PATH (CHROMIUM env overrides), or None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def render_check(html_path: Path | str, timeout: float = 60) -> dict:
    """Render `html_path` in headless Chromium -> {"img_ok", "img_total", "audio_ok",
    "audio_total", "audio_states": [[readyState, error code], ...]}: images complete with
    naturalWidth > 0; audio without error and readyState >= 1 (HAVE_METADATA).
    RuntimeError when Chromium is missing, fails or the page never reported."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium not found on PATH: install it (bash setup.sh --test, or "
                           "apt-get install chromium)")
    text = Path(html_path).read_text(encoding="utf-8")
    if "</body>" not in text:
        text += "</body>"
    with tempfile.TemporaryDirectory(prefix="render-check-") as tmp:
        page = Path(tmp) / "page.html"
        i = text.rfind("</body>")
        page.write_text(text[:i] + SCRIPT + text[i:], encoding="utf-8")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--mute-audio", f"--user-data-dir={tmp}/profile",
               f"--virtual-time-budget={WAIT_MS + 2000}", "--dump-dom", page.as_uri()]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{html_path}: chromium did not finish in {timeout} s") from e
    m = RESULT.search(out.stdout)
    if m is None:
        raise RuntimeError(f"{html_path}: no render result from chromium (rc {out.returncode}): "
                           + out.stderr.strip()[-500:])
    return json.loads(m.group(1))


def screenshot(html_path: Path | str, png: Path | str, size: str = "1200,1600",
               timeout: float = 60) -> None:
    """A PNG screenshot of the page at `size` (width,height px), for a look by eye."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium not found on PATH")
    with tempfile.TemporaryDirectory(prefix="render-shot-") as tmp:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={size}",
                        f"--screenshot={png}", "--virtual-time-budget=5000",
                        Path(html_path).resolve().as_uri()],
                       capture_output=True, timeout=timeout, check=True)

"""The download's circuit breaker: a run of network/throttling failures pauses every worker, one
video is probed, and the run goes on or stops cleanly with one line saying what is wrong.

Worker processes count the failures their own threads see (Hold) and stop starting attempts at
the threshold until the driver answers, so a dead network costs about `threshold` attempts per
process instead of one per video until the driver hears of it. The driver (Breaker) counts the
failures of all workers in the order it hears them, and decides; runner.py does the I/O."""
from __future__ import annotations

import collections
import re
import threading
from dataclasses import dataclass, field

from pipeline.download.availability import BREAKER_REASONS, advice, diagnosis


def counts_as_failure(reason: str | None) -> bool:
    """An attempt outcome that says the network or the site failed, not the video."""
    return reason in BREAKER_REASONS


def reached_site(status: str, reason: str | None, kind: str | None) -> bool:
    """An attempt outcome that shows the site answered (a download, or a verdict on the video);
    failures on this machine (kind local, refused URLs) tell nothing either way."""
    return not counts_as_failure(reason) and kind != "local" and reason != "url_rejected"


@dataclass
class Streak:
    """Failures in a row, the oldest at most window_s before the newest."""

    threshold: int
    window_s: float
    times: collections.deque = field(default_factory=collections.deque)

    def fail(self, t: float) -> bool:
        """Notes one failure at time t (s); True when `threshold` are in a row."""
        self.times.append(t)
        while self.times and self.times[0] < t - self.window_s:
            self.times.popleft()
        return len(self.times) >= self.threshold

    def reset(self) -> None:
        self.times.clear()


class Hold:
    """Worker side, one per process and run: the failures in a row of this process's threads.
    `epoch` is the driver's answer count (pushed with its state): a new one starts afresh."""

    def __init__(self, threshold: int, window_s: float):
        self.lock = threading.Lock()
        self.streak = Streak(threshold, window_s)
        self.epoch, self.told = 0, -1

    def _sync(self, epoch: int) -> None:
        if epoch != self.epoch:          # the driver answered: count afresh
            self.epoch = epoch
            self.streak.reset()

    def note(self, t: float, started: int, now: int, failed: bool, reached: bool) -> bool:
        """One attempt's outcome at time t, started in epoch `started` while the driver is at
        `now` -> True when this process starts holding (tell the driver: once per epoch)."""
        with self.lock:
            self._sync(now)
            if started != now:           # in flight across an answer: says nothing new
                return False
            if failed:
                if self.streak.fail(t) and self.told != now:
                    self.told = now
                    return True
            elif reached:
                self.streak.reset()
            return False

    def held(self, now: int) -> bool:
        """Whether this process's threads must wait for the driver's answer."""
        with self.lock:
            self._sync(now)
            return len(self.streak.times) >= self.streak.threshold


@dataclass
class Breaker:
    """Driver side: the decisions. `threshold` failures in a row (within window_s) of all
    workers, or one worker process holding, trip it: every worker pauses and one video is
    probed. Through: go on (a new epoch). Failed: pause cooldown_s, probe again; through: go
    on; failed again: stop. Failures of attempts started before an answer do not count."""

    threshold: int
    window_s: float
    cooldown_s: float
    epoch: int = 0
    phase: str = "running"          # running | probing (first probe due) | cooling | stopped
    until: float = 0.0              # end of the cool-down (epoch s)
    trips: int = 0
    streak: Streak = field(init=False)
    last_reason: str | None = None  # of the latest failure counted

    def __post_init__(self) -> None:
        self.streak = Streak(self.threshold, self.window_s)

    def attempt(self, t: float, epoch: int, reason: str | None, status: str,
                kind: str | None) -> bool:
        """One attempt's outcome heard at time t, started in `epoch` -> True when it trips."""
        if self.phase != "running" or epoch != self.epoch:
            return False
        if counts_as_failure(reason):
            self.last_reason = reason
            if self.streak.fail(t):
                return self._trip()
        elif reached_site(status, reason, kind):
            self.streak.reset()
        return False

    def hold(self, epoch: int, reason: str | None = None) -> bool:
        """A worker process holds at `epoch` -> True when that trips the breaker now."""
        if self.phase != "running" or epoch != self.epoch:
            return False    # already probing, or answered since
        self.last_reason = reason or self.last_reason
        return self._trip()

    def _trip(self) -> bool:
        self.phase, self.trips = "probing", self.trips + 1
        self.streak.reset()
        return True

    def probe_due(self, t: float) -> bool:
        """Whether a probe must run now (just tripped, or the cool-down is over)."""
        return self.phase == "probing" or (self.phase == "cooling" and t >= self.until)

    def probed(self, t: float, failed: bool) -> str:
        """The probe's verdict at time t -> "resume" (a new epoch), "cool" (pause until
        `until`, then probe again) or "stop"."""
        if not failed:
            self.epoch, self.phase = self.epoch + 1, "running"
            return "resume"
        if self.phase == "probing":
            self.phase, self.until = "cooling", t + self.cooldown_s
            return "cool"
        self.phase = "stopped"
        return "stop"


def short(message: str | None, limit: int = 120) -> str:
    """A failure message cut to its gist: one line, yt-dlp's "(caused by ...)" tail removed,
    the end kept ("... [Errno 111] Connection refused")."""
    text = re.sub(r"\s+", " ", (message or "").split(" (caused by ")[0]).strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def stop_line(reason: str | None, failures: int, video_id: str, known: bool,
              cooldown_s: float, message: str | None) -> str:
    """The one line a stopped run ends with: what is wrong, the evidence, what to do."""
    which = "which downloaded before" if known else "the next listed video"
    return (f"{diagnosis(reason)}: {failures} videos in a row failed ({reason}), and a probe "
            f"of {video_id} ({which}) still failed after a {cooldown_s:g} s pause "
            f"({short(message)}); {advice(reason)}")

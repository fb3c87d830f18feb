"""A heartbeat in job logs: one plain line every N iterations or M minutes, whatever the progress bar does.

    [drift] heartbeat: iteration 20/300 | reward 0.512 | diversity 0.301 | 2.31 s/iter | ETA 1h51m | peak mem 1.4 GiB

Sweeps and Slurm jobs run with the progress bar off; these lines are what ``tail -f`` on their log
shows. Cadence: ``DRIFT_HEARTBEAT_EVERY`` iterations (default 10; 0 = never by count) or
``DRIFT_HEARTBEAT_MINUTES`` minutes (default 5; 0 = never by time), whichever comes first, plus the
last iteration. s/iter is the mean over the iterations this process has run (a resume restarts it).
"""

from __future__ import annotations

import os
import resource
import sys
import time


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"${name}={raw!r}: must be a number") from None


def peak_memory_gib() -> tuple[float, float | None]:
    """(peak resident memory of this process, peak CUDA memory allocated by torch or None), GiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_gib = rss / 2**30 if sys.platform == "darwin" else rss / 2**20
    gpu = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.max_memory_allocated() / 2**30
    return rss_gib, gpu


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Heartbeat:
    """``beat(step, metrics)`` after every iteration prints a line when one is due (see the module doc)."""

    def __init__(self, total: int, start: int, enabled: bool = True, every: int | None = None,
                 minutes: float | None = None, write=print):
        self.total, self.start, self.enabled, self.write = total, start, enabled, write
        self.every = int(_env_float("DRIFT_HEARTBEAT_EVERY", 10) if every is None else every)
        self.minutes = _env_float("DRIFT_HEARTBEAT_MINUTES", 5.0) if minutes is None else minutes
        self.t0 = self.t_last = time.time()
        self.last = start

    def due(self, step: int, now: float) -> bool:
        return (step == self.total or (self.every > 0 and step - self.last >= self.every)
                or (self.minutes > 0 and now - self.t_last >= 60 * self.minutes))

    def beat(self, step: int, m: dict) -> None:
        now = time.time()
        if not self.enabled or not self.due(step, now):
            return
        per_iter = (now - self.t0) / max(1, step - self.start)
        rss, gpu = peak_memory_gib()
        mem = f"peak mem {rss:.1f} GiB" + (f", GPU {gpu:.1f} GiB" if gpu is not None else "")
        self.write(f"[drift] heartbeat: iteration {step}/{self.total} | reward {m.get('reward/mean', float('nan')):.4g} | "
                   f"diversity {m.get('diversity/train_pairwise', float('nan')):.4g} | {per_iter:.2f} s/iter | "
                   f"ETA {_duration(per_iter * (self.total - step))} | {mem}")
        sys.stdout.flush()
        self.last, self.t_last = step, now

"""Where one thread spends a stretch of wall time: a sampling profiler in a background thread
(`sys._current_frames`, every `interval` seconds), started and stopped by the caller.

`top()` gives, for the most frequent frames, the share of samples in which each function was on
the stack (inclusive), so a phase that waits on a server shows up as the call that waits. It
exists for the end of a large sweep (`benchmarks/sweep_scale.py --profile-end`), where the time
goes into Tune's own code and several clients, and a deterministic profiler would distort the
waits it is meant to find."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path

from common import ROOT


class StackSampler:
    """Samples the stack of the thread `ident` (default: the thread that creates it)."""

    def __init__(self, ident: int | None = None, interval: float = 0.1) -> None:
        self.ident = ident if ident is not None else threading.get_ident()
        self.interval = interval
        self.samples = 0
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.ident)
            seen = set()
            while frame is not None:
                code = frame.f_code
                seen.add(f"{_short(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            self.counts.update(seen)
            self.samples += 1

    def top(self, n: int = 25) -> list[dict[str, object]]:
        """The `n` functions most often on the stack: share of samples and seconds."""
        return [{"function": f, "share": round(c / self.samples, 3),
                 "seconds": round(c * self.interval, 1)}
                for f, c in self.counts.most_common(n)] if self.samples else []  # fmt: skip


def _short(filename: str) -> str:
    """The file relative to the repository or to site-packages."""
    path = Path(filename)
    if path.is_relative_to(ROOT) and ".venv" not in path.parts:
        return str(path.relative_to(ROOT))
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return "/".join(parts[-2:])

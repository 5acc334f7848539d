"""Which test file each of the two test processes runs next: the longest first.

pytest-xdist's `--dist loadfile` hands out whole files, most tests first, so a file holding one
two-minute drill starts last and the run waits for it while the other process idles. Here the
files go out longest first (by `tests/file_durations.json`, seconds per file measured in a full
run), so the short files fill in at the end. A file not in the table counts as short.

Refresh the table after adding or changing slow tests (it takes a full run):

    pytest --store-file-durations
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from xdist.scheduler import LoadFileScheduling

TABLE = Path(__file__).with_name("file_durations.json")


def load_table() -> dict[str, float]:
    try:
        return json.loads(TABLE.read_text())
    except FileNotFoundError:
        return {}


class LongestFileFirst(LoadFileScheduling):
    """`--dist loadfile`, with each free process given the longest file still waiting."""

    def __init__(self, config, log=None) -> None:
        super().__init__(config, log)
        self.seconds = load_table()

    def _assign_work_unit(self, node) -> None:
        longest = max(self.workqueue, key=lambda scope: self.seconds.get(_file(scope), 0.0))
        self.workqueue.move_to_end(longest, last=False)
        super()._assign_work_unit(node)


def _file(scope: str) -> str:
    return Path(scope.split("::")[0]).name


class DurationRecorder:
    """Sums each file's test durations (setup, call, teardown) as reports arrive in the main
    process, and writes the table when the session ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[_file(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session) -> None:
        ordered = dict(sorted(self.seconds.items(), key=lambda kv: -kv[1]))
        tmp = TABLE.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: round(v, 1) for k, v in ordered.items()}, indent=1) + "\n")
        tmp.replace(TABLE)

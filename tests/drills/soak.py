"""Run the fault drills again and again and tally them: per drill, how many times it ran and
passed, and the worst of each time it records (recovery, resume, detection, stall).

    python -m tests.drills.soak --runs 3                      # every drill, 3 rounds
    python -m tests.drills.soak --runs 5 -k "worker_kill or corruption" --out /tmp/soak.json

Each round is one `pytest tests/test_drill_*.py` process (a fresh interpreter, fresh fixtures)
with a JUnit report for the outcomes and $TRM_DRILL_LOG for the numbers each drill records
(`tests.drills.record`). Seeded drills draw a new seed every round. Prints a table and writes
JSON; exits 1 if any drill failed in any round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRILLS = [
    *sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_drill_*.py")
        if p.name != "test_drill_soak.py"  # this tool's own test
    ),
    # drill 1 on Ray Train shares its cluster and reference run with the other Ray Train tests
    "tests/test_train_ray.py::test_killed_worker_resumes_from_checkpoint_exactly",
]


def outcomes(junit: Path) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped"} from a pytest JUnit XML report."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[test] = (
            "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds
            else "passed"
        )  # fmt: skip
    return result


def one_round(k: int, select: str, work: Path) -> tuple[dict[str, str], list[dict], float]:
    junit, log = work / f"round{k}.xml", work / f"round{k}.jsonl"
    cmd = [sys.executable, "-m", "pytest", *DRILLS, "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}"] + (["-k", select] if select else [])  # fmt: skip
    t = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRM_DRILL_LOG": str(log)}, check=False)
    wall = time.monotonic() - t
    if not junit.exists():
        raise SystemExit(f"round {k}: pytest wrote no report ({junit}); see its output above")
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return outcomes(junit), records, wall


def tally(rounds: list[tuple[dict[str, str], list[dict], float]]) -> dict[str, Any]:
    """Per drill record name: rounds it ran and passed in, and the max of every `*_s` number.
    A test counts under the drill names it recorded in any round (so a round where it failed
    before recording still counts against them); tests that never record count by test id."""
    ran: dict[str, int] = defaultdict(int)
    passed: dict[str, int] = defaultdict(int)
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    drills_of: dict[str, set[str]] = defaultdict(set)
    for _, records, _ in rounds:
        for r in records:
            drills_of[r.get("test", "")].add(r["drill"])
    for outcome, records, _ in rounds:
        by_test = defaultdict(list)
        for r in records:
            by_test[r.get("test", "")].append(r)
        for test, status in outcome.items():
            if status == "skipped":
                continue
            # pytest ids in records are paths (tests/test_x.py::name[param]); JUnit's are
            # dotted module names (tests.test_x::name[param])
            mod, name = test.split("::", 1)
            key = f"{mod.replace('.', '/')}.py::{name}"
            names = sorted(drills_of.get(key, ())) or [key]
            for n in names:
                ran[n] += 1
                passed[n] += status == "passed"
            for r in by_test.get(key, []):
                for field, v in r.items():
                    if field.endswith("_s") and isinstance(v, (int, float)) and v == v:
                        w = worst[r["drill"]]
                        w[field] = max(w.get(field, float("-inf")), float(v))
    return {n: {"ran": ran[n], "passed": passed[n], "worst": worst.get(n, {})} for n in sorted(ran)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds of every selected drill")
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression")
    ap.add_argument("--out", default="", help="JSON result file")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error(f"--runs must be >= 1, got {a.runs}")
    with tempfile.TemporaryDirectory(prefix="trm-soak-") as d:
        rounds = []
        for k in range(1, a.runs + 1):
            rounds.append(one_round(k, a.select, Path(d)))
            print(f"# round {k}/{a.runs}: {rounds[-1][2]:.0f} s", flush=True)
    result = tally(rounds)
    width = max(len(n) for n in result) if result else 10
    print(f"\n{'drill':<{width}}  ran  passed  worst times (s)")
    for n, r in result.items():
        times = ", ".join(f"{f} {v:.1f}" for f, v in sorted(r["worst"].items()))
        print(f"{n:<{width}}  {r['ran']:>3}  {r['passed']:>6}  {times}")
    if a.out:
        doc = {"rounds": a.runs, "select": a.select, "round_wall_s": [w for *_, w in rounds],
               "drills": result, "raw": [{"outcomes": o, "records": r} for o, r, _ in rounds]}  # fmt: skip
        Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r["ran"] == r["passed"] for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The drill soak tally (tests/drills/soak.py): outcomes from pytest's own JUnit report, numbers
from the drill records, joined by test id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drills.soak import outcomes, tally


def test_tally_joins_junit_outcomes_and_drill_records(tmp_path):
    # a real pytest run writes the report and the records
    t = tmp_path / "test_fake_drill.py"
    t.write_text(
        "import pytest\n"
        "from drills import record\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_ok(n):\n"
        "    record('fake.ok', runs=1, recovery_s=float(n), count=n)\n"
        "def test_bad():\n"
        "    record('fake.bad', runs=1, resume_s=0.5)\n"
        "    assert False\n"
        "def test_silent():\n"
        "    pass\n"
    )
    junit, log = tmp_path / "r.xml", tmp_path / "r.jsonl"
    tests_dir = Path(__file__).parent
    env = {"TRM_DRILL_LOG": str(log), "PYTHONPATH": str(tests_dir), "PATH": ""}
    subprocess.run([sys.executable, "-m", "pytest", str(t), "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", f"--rootdir={tmp_path}"],
                   cwd=tmp_path, env=env, check=False, capture_output=True)  # fmt: skip
    records = [json.loads(line) for line in log.read_text().splitlines()]
    out = outcomes(junit)
    assert sorted(out.values()) == ["failed", "passed", "passed", "passed"]
    rounds = [(out, records, 1.0), (out, records[:1], 1.0)]  # round 2: only test_ok[1] recorded
    result = tally(rounds)
    assert result["fake.ok"]["ran"] == 4 and result["fake.ok"]["passed"] == 4
    assert result["fake.ok"]["worst"] == {"recovery_s": 2.0}  # count is not a time
    # failed in both rounds, recorded in one: both count against it
    assert result["fake.bad"] == {"ran": 2, "passed": 0, "worst": {"resume_s": 0.5}}
    silent = [k for k in result if k.endswith("::test_silent")]
    assert len(silent) == 1 and result[silent[0]]["ran"] == 2

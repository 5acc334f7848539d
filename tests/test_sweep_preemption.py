"""Lost nodes cost no retries: a trial attempt that goes away with its node, or with its process
after reaching a new checkpoint (preemption, node failure), is retried without limit and
counted as a preemption; one that fails on its own, or goes away without reaching a checkpoint
on a node that stays up, counts against `max_failures`; input that fails the same way every
time ends the trial at once (tests/test_sweep.py, the damaged shard). The record is
`pipeline.sweeping.store`'s; real kills are tests/test_drill_raylet_kill.py (a trial's node
lost six times with `max_failures: 0`, once before its first checkpoint: it completes,
counting 6 preemptions)."""

from __future__ import annotations

from pipeline.sweeping.store import begin_attempt, end_attempt_with_error, trial_attempts


def test_attempts_lost_after_progress_are_preemptions_and_the_rest_are_errors(tmp_path):
    exp = str(tmp_path / "exp")
    assert trial_attempts(exp, "t") == {"lost": 0, "errors": 0, "open": False, "step": -1}
    assert begin_attempt(exp, "t", -1)["lost"] == 0  # first attempt, no checkpoint yet
    a = begin_attempt(exp, "t", 8)  # the first went away after checkpointing step 8
    assert (a["lost"], a["errors"]) == (1, 0)
    a = begin_attempt(exp, "t", 24)  # and again after step 24: another preemption
    assert (a["lost"], a["errors"]) == (2, 0)
    a = begin_attempt(exp, "t", 24)  # went away before its next checkpoint: an error
    assert (a["lost"], a["errors"]) == (2, 1)
    assert end_attempt_with_error(exp, "t") == 2  # failed on its own
    a = begin_attempt(exp, "t", 24)  # the failed attempt was closed: nothing more counted
    assert (a["lost"], a["errors"], a["open"]) == (2, 2, True)
    assert trial_attempts(exp, "other")["lost"] == 0  # per trial


def test_an_attempt_whose_node_died_is_lost_even_without_progress(tmp_path):
    exp, dead, asked = str(tmp_path / "exp"), {"n1"}, []

    def alive(node: str) -> bool:
        asked.append(node)
        return node not in dead

    begin_attempt(exp, "t", -1, "n1", alive)  # starts on n1; n1 is lost before a checkpoint
    a = begin_attempt(exp, "t", -1, "n2", alive)
    assert (a["lost"], a["errors"], asked) == (1, 0, ["n1"])  # a preemption, not an error
    a = begin_attempt(exp, "t", -1, "n3", alive)  # n2 is still up: the attempt failed itself
    assert (a["lost"], a["errors"], asked[-1]) == (1, 1, "n2")
    a = begin_attempt(exp, "t", 8, "n3", alive)  # progress decides without asking Ray
    assert (a["lost"], a["errors"], len(asked)) == (2, 1, 2)
    a = begin_attempt(exp, "t", 8, "n3", alive)  # same node as before: up, not asked
    assert (a["lost"], a["errors"], len(asked)) == (2, 2, 2)

"""pipeline.evaluation.trajectories, the test-time evaluation: under protocol fixed_depth one
noiseless trajectory is the ordinary evaluation's answer exactly; best-Q@K, mode@K and pass@K
come from one set of trajectories and carry the protocol in their names; the eval section
refuses settings of the other protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_trm import halting_model, make_batch, tiny, tiny5

from pipeline.config.run import ConfigError, EvalConfig
from pipeline.evaluation.evaluator import evaluate, finish
from pipeline.evaluation.trajectories import evaluate_trajectories, rule_metric
from trm.model import Prediction

CPU = torch.device("cpu")
RULES = ("best_q", "mode", "pass_at_k")


def _batches(model, B: int = 8) -> list[dict[str, np.ndarray]]:
    """Two batches whose rows are right at step halt_max_steps, but every fourth right at its
    ACT halting step instead (so the two protocols score differently)."""
    b = make_batch(model.config, B, seed=1)
    x, pid = b["inputs"], b["puzzle_identifiers"]
    fixed = model.predict(x, pid, halt=False).preds
    halted = model.predict(x, pid, halt=True).preds
    at_halt = torch.arange(B) % 4 == 3
    assert (fixed != halted).any(-1)[~at_halt].any(), "some answers should change after halting"
    b["labels"] = torch.where(at_halt[:, None], halted, fixed)
    half = B // 2
    return [{k: v[s : s + half].numpy() for k, v in b.items()} for s in (0, half)]


def test_fixed_depth_one_trajectory_is_the_ordinary_evaluation_exactly():
    cfg = tiny5()
    model = halting_model(cfg)
    batches = _batches(model)
    res = evaluate(model, batches, device=CPU, halt_max_steps=cfg.halt_max_steps, depth_steps=0)
    ordinary, curve = finish(res.flat(), cfg.halt_max_steps)
    got = evaluate_trajectories(model, batches, EvalConfig(protocol="fixed_depth"), CPU)
    assert got["eval/count"] == ordinary["eval/count"] == 8
    assert got["eval/exact_accuracy"] == ordinary["eval/exact_accuracy"]
    assert got["eval/accuracy"] == ordinary["eval/accuracy"]
    assert got["eval/steps"] == cfg.halt_max_steps
    for rule in RULES:  # one trajectory: every rule answers with it
        assert got[rule_metric("fixed_depth", rule)] == ordinary["eval/exact_accuracy"], rule
    # a shallower depth D is the ordinary rollout's answer after step D
    d3 = evaluate_trajectories(model, batches, EvalConfig(protocol="fixed_depth", depth=3), CPU)
    assert d3["eval/exact_accuracy"] == curve[2] and d3["eval/steps"] == 3
    # ACT halting is another answer: the ordinary evaluation's at-halt one, not its headline
    act = evaluate_trajectories(model, batches, EvalConfig(), CPU)
    assert act["eval/exact_accuracy"] == ordinary["eval/exact_accuracy_at_halt"]
    assert act["eval/exact_accuracy"] != ordinary["eval/exact_accuracy"]
    assert rule_metric("act", "best_q") in act and rule_metric("fixed_depth", "best_q") not in act


class _HandMade:
    """A stand-in model whose K=3 trajectories of two examples (labels [1, 1] and [2, 2]) are
    fixed. Example 0: the right answer has the highest q but is outvoted; example 1: the right
    answer wins the vote but not the q."""

    config = tiny()

    def __init__(self):
        self.calls = []

    def run_trajectories(self, inputs, pids, halt, max_steps, **kw):
        self.calls.append((halt, max_steps, kw["trajectories"]))
        preds = torch.tensor([[1, 1], [0, 1], [0, 1], [0, 0], [2, 2], [2, 2]])
        steps = torch.full((6,), 4, dtype=torch.int32)
        return Prediction(preds=preds, logits=torch.zeros(6, 2, 3),
                          q_halt_logits=torch.tensor([0.9, 0.1, 0.2, 0.5, 0.1, 0.2]),
                          steps=steps, trajectory_steps=steps.view(2, 3))  # fmt: skip


@pytest.mark.parametrize("select, accuracy", [("q_halt", 0.5), ("vote", 0.75)])
def test_best_q_mode_and_pass_at_k_on_a_hand_made_case(select, accuracy):
    """best-Q@3 and mode@3 each solve one example, pass@3 (any trajectory right) both, all
    from the one call of run_trajectories."""
    model = _HandMade()
    batch = {"inputs": np.zeros((2, 2)), "labels": np.array([[1, 1], [2, 2]]),
             "puzzle_identifiers": np.zeros(2)}  # fmt: skip
    e = EvalConfig(protocol="fixed_depth", depth=4, trajectories=3, select=select)
    got = evaluate_trajectories(model, [batch], e, CPU)
    assert model.calls == [(False, 4, 3)]  # one set of trajectories, fixed depth 4, K=3
    assert got[rule_metric("fixed_depth", "best_q")] == 0.5
    assert got[rule_metric("fixed_depth", "mode")] == 0.5
    assert got[rule_metric("fixed_depth", "pass_at_k")] == 1.0
    assert got["eval/exact_accuracy"] == 0.5 and got["eval/count"] == 2
    # token accuracy of the selected answers: q_halt takes [1,1] and [0,0]; vote [0,1], [2,2]
    assert got["eval/accuracy"] == accuracy and got["eval/steps"] == 4


@pytest.mark.parametrize(
    "section, says",
    [
        ({"depth": 8}, "eval.depth: is the depth of protocol fixed_depth, got 8 with protocol act"),
        ({"protocol": "fixed_depth", "max_steps": 8},
         "eval.max_steps: is the step cap of protocol act, got 8 with protocol fixed_depth"),
        ({"protocol": "fixed_depth", "halt_threshold": 0.3},
         "eval.halt_threshold: is the halting threshold of protocol act"),
        ({"protocol": "fixed_depth", "select": "first"}, "eval.select: 'first' picks"),
        ({"protocol": "fixed"}, "eval.protocol: must be one of"),
        ({"protocol": "fixed_depth", "depth": -1}, "eval.depth: must be an integer >= 0"),
    ],
)  # fmt: skip
def test_the_eval_section_refuses_settings_of_the_other_protocol(section, says):
    with pytest.raises(ConfigError) as e:
        EvalConfig.build(section, "eval")
    assert says in str(e.value)
    ok = EvalConfig.build({"protocol": "fixed_depth", "depth": 32}, "eval")
    assert ok.steps() == 32 and EvalConfig.build({"max_steps": 8}, "eval").steps() == 8

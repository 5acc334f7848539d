"""pipeline.evaluation.evaluator: the at-halt metrics are what `TRM.predict(halt=True)` answers, the
halting-threshold curve, and the cost of one evaluation (the official halt_max_steps steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_trm import halting_model
from tiny_trm import make_batch as batch_of
from tiny_trm import tiny5 as tiny

from pipeline.evaluation.evaluator import evaluate, finish, halt_curve
from trm import flops, should_halt

CPU = torch.device("cpu")
TAUS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _np(b: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in b.items()}


@pytest.mark.parametrize("tau", [0.5, 0.8])
@pytest.mark.parametrize("no_ACT_continue", [True, False])
def test_at_halt_metrics_are_what_predict_answers(no_ACT_continue, tau):
    cfg = tiny(no_ACT_continue=no_ACT_continue, halt_threshold=tau)
    model = halting_model(cfg)
    B = 8
    b = batch_of(cfg, B, seed=1)
    pred = model.predict(b["inputs"], b["puzzle_identifiers"], halt=True)
    assert len(set(pred.steps.tolist())) > 1, "halting should vary between examples"
    # half the rows are right exactly at their halting step, the others at the last step
    final = model.predict(b["inputs"], b["puzzle_identifiers"], halt=False)
    b["labels"] = torch.where((torch.arange(B) % 2 == 0)[:, None], pred.preds, final.preds)
    last = model.rollout_preds(b["inputs"], b["puzzle_identifiers"])
    says = should_halt(last.q_halt_logits[-1], last.q_continue_logits[-1],
                       no_ACT_continue=no_ACT_continue, threshold=tau)  # fmt: skip
    for i in range(B):  # one example per evaluation: per-example equality
        row = _np({k: v[i : i + 1] for k, v in b.items()})
        res = evaluate(model, [row], device=CPU, halt_max_steps=cfg.halt_max_steps,
                       depth_steps=0, halt_thresholds=TAUS)  # fmt: skip
        m, _ = finish(res.flat(), cfg.halt_max_steps)
        assert m["eval/steps"] == pred.steps[i], i
        right = bool((pred.preds[i] == b["labels"][i]).all())
        assert m["eval/exact_accuracy_at_halt"] == right, i
        assert m["eval/exact_accuracy"] == bool((final.preds[i] == b["labels"][i]).all()), i
        # q_halt_accuracy: the halting decision at the last step agrees with its correctness
        assert m["eval/q_halt_accuracy"] == (bool(says[i]) == bool(m["eval/exact_accuracy"]))


def _evaluate(model, batches, depth_steps=0, **kw):
    cfg = model.config
    res = evaluate(model, batches, device=CPU, halt_max_steps=cfg.halt_max_steps,
                   depth_steps=depth_steps, halt_thresholds=TAUS, **kw)  # fmt: skip
    return res, finish(res.flat(), cfg.halt_max_steps)


@pytest.mark.parametrize("no_ACT_continue", [True, False])
def test_halting_threshold_curve(no_ACT_continue):
    cfg = tiny(no_ACT_continue=no_ACT_continue)
    model = halting_model(cfg)
    batches = [_np(batch_of(cfg, 12, seed=s)) for s in range(2)]
    _, (m, _) = _evaluate(model, batches)
    names = {k for k in m if k.startswith("eval/halt_tau_")}
    assert names == {f"eval/halt_tau_{t}/{what}" for t in ("0.1", "0.3", "0.5", "0.7", "0.9")
                     for what in ("steps", "exact_accuracy")}  # fmt: skip
    curve = halt_curve(m, TAUS)
    steps = [p["steps"] for p in curve]
    assert steps == sorted(steps) and steps[0] < steps[-1]  # more caution, more steps
    assert 1 <= steps[0] and steps[-1] <= cfg.halt_max_steps
    half = curve[TAUS.index(0.5)]
    assert half["steps"] == m["eval/steps"]
    assert half["exact_accuracy"] == m["eval/exact_accuracy_at_halt"]
    # the curve comes from the same rollout: a model with tau 0.9 reports that point as its own
    strict = halting_model(cfg.model_copy(update={"halt_threshold": 0.9}))
    _, (m9, _) = _evaluate(strict, batches)
    assert m9["eval/steps"] == curve[-1]["steps"]
    assert m9["eval/exact_accuracy_at_halt"] == curve[-1]["exact_accuracy"]


class _CountSteps:
    """Counts ACT steps (q head calls) and network calls (first block) of a model."""

    def __init__(self, model):
        self.steps = self.calls = 0
        model.q_head.register_forward_hook(lambda *a: self._add("steps"))
        model.layers[0].register_forward_hook(lambda *a: self._add("calls"))

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)


def test_default_evaluation_costs_the_official_steps_and_depth_is_opt_in():
    cfg = tiny()
    model = halting_model(cfg)
    count = _CountSteps(model)
    batches = [_np(batch_of(cfg, 6, seed=s)) for s in range(3)]
    res, (m, curve) = _evaluate(model, batches, keep_predictions=True)
    per_call = cfg.H_cycles * (cfg.L_cycles + 1)
    assert count.steps == 3 * cfg.halt_max_steps  # one rollout per batch, halt_max_steps steps
    assert count.calls == 3 * cfg.halt_max_steps * per_call
    official = cfg.halt_max_steps * flops(cfg)["inference_step"]
    assert m["eval/flops_per_example"] <= 1.1 * official
    assert m["eval/flops_per_example"] == pytest.approx(official)
    assert len(curve) == cfg.halt_max_steps
    # the ARC voting records: the final step's answer and q_halt per example
    assert len(res.predictions) == 18
    assert set(res.predictions[0]) == {"puzzle_identifier", "inputs", "labels", "pred", "q_halt"}
    last = model.rollout_preds(torch.as_tensor(batches[0]["inputs"]),
                               torch.as_tensor(batches[0]["puzzle_identifiers"]))  # fmt: skip
    assert np.array_equal(res.predictions[0]["pred"], last.preds[-1, 0].numpy())
    assert res.predictions[0]["q_halt"] == pytest.approx(float(last.q_halt_logits[-1, 0]))

    count.steps = count.calls = 0
    _, (deep, curve) = _evaluate(model, batches, depth_steps=2 * cfg.halt_max_steps)
    assert count.steps == 3 * 2 * cfg.halt_max_steps and len(curve) == 2 * cfg.halt_max_steps
    assert deep["eval/flops_per_example"] == pytest.approx(2 * official)
    for key in ("eval/exact_accuracy", "eval/steps", "eval/exact_accuracy_at_halt"):
        assert deep[key] == m[key], key  # the headline metrics do not depend on the depth

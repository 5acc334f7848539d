"""Test-time speed: ACT halting (rows leave the batch) against fixed-depth evaluation.

A small TRM is trained here on generated 4x4 Sudoku (10 clues given) with the paper's recipe
(deep supervision, halting learned by the q head, exploration; ~5 CPU-minutes), then evaluated
on held-out puzzles (none of them in the training set) three ways:
- `rollout`: the library's fixed-depth evaluation (halt_max_steps steps, every step's
  logits kept; what pipeline/evaluation/evaluator.py runs), answer = last step;
- `fixed`: `TRM.predict(halt=False)`, the same halt_max_steps steps, heads on the last only;
- `act`: `TRM.predict(halt=True)`, each example stops at its first q_halt > 0 and leaves the
  batch (the running rows are compacted), answer = that step's.
Reported: examples/s (median over interleaved repeats, with spread), the ratio act / fixed per
repeat, exact accuracy of each, and the distribution of halting steps.

    python benchmarks/inference.py               # train (or load the cached weights), measure
    python benchmarks/inference.py --retrain     # ignore the cached weights
    python benchmarks/inference.py --quick       # tiny: a smoke run

Weights are cached in benchmarks/results/inference_model.pt (0.5 MB), keyed by the
training recipe; a changed recipe retrains. Writes benchmarks/results/inference[_<device>].json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import (
    RESULTS,
    fmt_spread,
    headline_clock,
    machine,
    pick_device,
    save,
    set_threads,
    summary,
    table,
    timed,
)

from pipeline.config.run import RunConfig
from pipeline.data.builders import generate_sudoku
from pipeline.training.state import TrainState, train_step
from trm import TRM, TRMConfig
from trm.puzzles import sudoku

# The small model and its recipe (the cache key is a hash of these two dicts).
MODEL = dict(
    hidden_size=64, num_heads=4, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=2,
    pos_encodings="rope", puzzle_emb_ndim=0, puzzle_emb_len=1, halt_max_steps=16,
    halt_exploration_prob=0.1, no_ACT_continue=True,
)  # fmt: skip
RECIPE = dict(
    size=4, min_clues=10, num_train=4000, steps=3000, batch=64, lr=3e-3, warmup=100, min_ratio=0.1,
    weight_decay=0.1, ema=0.995, loss="softmax", seed=0,
)  # fmt: skip
QUICK_RECIPE = dict(RECIPE, num_train=200, steps=20, batch=16)


LOOP = "pipeline.training.state.train_step"
"""Part of the cache key: weights trained by another loop (this file's own, before) retrain."""


def recipe_key(model: dict, recipe: dict) -> str:
    blob = json.dumps({"model": model, "recipe": recipe, "loop": LOOP}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_config(recipe: dict, batch_size: int | None = None) -> TRMConfig:
    n = recipe["size"]
    return TRMConfig(**MODEL, seq_len=n * n, vocab_size=n + 2, num_puzzle_identifiers=1,
                     batch_size=batch_size)  # fmt: skip


def puzzles(count: int, size: int, seed: int, min_clues: int = 0) -> dict[str, torch.Tensor]:
    q, s, _ = generate_sudoku(count, size=size, seed=seed, min_clues=min_clues)
    return {
        "inputs": torch.from_numpy(sudoku.encode(q).astype(np.int64)),
        "labels": torch.from_numpy(sudoku.encode(s).astype(np.int64)),
        "puzzle_identifiers": torch.zeros(count, dtype=torch.long),
    }


def held_out(recipe: dict, count: int) -> dict[str, torch.Tensor]:
    """`count` test puzzles, none of them (as given) in the training set."""
    train_q = puzzles(recipe["num_train"], recipe["size"], recipe["seed"] + 1, recipe["min_clues"])
    seen = {tuple(q) for q in train_q["inputs"].tolist()}
    test = puzzles(2 * count, recipe["size"], recipe["seed"] + 1000, recipe["min_clues"])
    keep = torch.tensor([tuple(q) not in seen for q in test["inputs"].tolist()])
    test = {k: v[keep][:count] for k, v in test.items()}
    if len(test["inputs"]) < count:
        raise ValueError(f"only {len(test['inputs'])} held-out puzzles; lower --test")
    return test


def run_config(recipe: dict) -> RunConfig:
    """The recipe as the training loop's config (data.uri is never read: batches are made here)."""
    return RunConfig.from_dict({
        "data": {"uri": "unused", "global_batch_size": recipe["batch"], "seed": recipe["seed"]},
        "optim": {"lr": recipe["lr"], "lr_warmup_steps": recipe["warmup"],
                  "lr_min_ratio": recipe["min_ratio"], "weight_decay": recipe["weight_decay"],
                  "ema_rate": recipe["ema"], "loss_type": recipe["loss"]},
        "schedule": {"steps": recipe["steps"]},
    })  # fmt: skip


def train(recipe: dict, log: bool = True) -> tuple[TRM, dict[str, Any]]:
    """The training loop's own step (`train_step`: one optimiser step per ACT step, the carry
    passed on, AdamATan2, warm-up + cosine, EMA) on freshly augmented puzzles; the EMA weights."""
    n, B, steps = recipe["size"], recipe["batch"], recipe["steps"]
    cfg = run_config(recipe)
    data = puzzles(recipe["num_train"], n, seed=recipe["seed"] + 1, min_clues=recipe["min_clues"])
    state = TrainState.create(cfg, model_config(recipe, B), 0, torch.device("cpu"))
    state.model.train()
    rng = np.random.default_rng(recipe["seed"])
    t0, seen = time.process_time(), Counter()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(data["inputs"]), B)
        x, y = sudoku.augment(data["inputs"][idx].numpy(), data["labels"][idx].numpy(),
                              rng.integers(0, 2**63, B, dtype=np.uint64), n=n)  # fmt: skip
        batch = {"inputs": torch.from_numpy(x), "labels": torch.from_numpy(y),
                 "puzzle_identifiers": data["puzzle_identifiers"][:B]}  # fmt: skip
        m = train_step(state, state.model, batch, cfg)
        for k in ("count", "exact_accuracy", "steps"):
            seen[k] += float(m[k])
        if log and (step % 250 == 0 or step == steps):
            c = max(seen["count"], 1)
            print(f"  train step {step}/{steps}: loss {float(m['loss']) / B:.3f} "
                  f"exact {seen['exact_accuracy'] / c:.3f} steps {seen['steps'] / c:.1f} "
                  f"({time.process_time() - t0:.0f} cpu-s)", flush=True)  # fmt: skip
            seen.clear()
    return state.eval_model().eval(), {"train_cpu_s": time.process_time() - t0}


def load_or_train(recipe: dict, path: Path | None, retrain: bool) -> tuple[TRM, dict[str, Any]]:
    """The cached model at `path` when its recipe matches, else a freshly trained one (saved
    there unless `path` is None)."""
    key = recipe_key(MODEL, recipe)
    if path is not None and path.exists() and not retrain:
        state = torch.load(path, weights_only=True)
        if state.get("key") == key:
            model = TRM(model_config(recipe)).eval()
            model.load_state_dict(state["model"])
            return model, {"cached": str(path.relative_to(common.ROOT)), "key": key,
                           "train_cpu_s": state.get("train_cpu_s")}  # fmt: skip
    print(f"training the small model ({recipe['steps']} steps, {recipe['size']}x{recipe['size']} "
          "Sudoku)...", flush=True)  # fmt: skip
    model, info = train(recipe)
    if path is None:
        return model, {"cached": None, "key": key, **info}
    buf = io.BytesIO()
    torch.save({"key": key, "model": model.state_dict(), **info, "recipe": recipe,
                "arch": MODEL}, buf)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return model, {"cached": None, "key": key, **info}


def evaluate(model: TRM, test: dict[str, torch.Tensor], batch: int, device: torch.device,
             clock: str, repeats: int) -> dict[str, Any]:  # fmt: skip
    """Interleaved timings of the three evaluations over the whole test set."""
    chunks = [
        (test["inputs"][i : i + batch].to(device), test["puzzle_identifiers"][i : i + batch].to(device))
        for i in range(0, len(test["inputs"]), batch)
    ]  # fmt: skip
    labels = test["labels"].to(device)
    S = model.config.halt_max_steps

    def rollout():
        return [model.rollout(x, p, num_steps=S).logits[-1].argmax(-1) for x, p in chunks], None

    def fixed():
        outs = [model.predict(x, p, halt=False) for x, p in chunks]
        return [o.preds for o in outs], None

    def act():
        outs = [model.predict(x, p, halt=True) for x, p in chunks]
        return [o.preds for o in outs], torch.cat([o.steps for o in outs])

    ways = {"rollout": rollout, "fixed": fixed, "act": act}
    times: dict[str, list[float]] = {k: [] for k in ways}
    results: dict[str, Any] = {}
    for name, fn in ways.items():  # warm-up, and the answers
        results[name] = fn()
    for _ in range(repeats):
        for name, fn in ways.items():
            _, s = timed(fn, device)
            times[name].append(s.get(clock))
    n = len(labels)
    out: dict[str, Any] = {"examples": n, "batch": batch}
    for name in ways:
        preds = torch.cat(results[name][0])
        exact = (preds == labels).all(-1).float().mean().item()
        out[name] = {
            "seconds": summary(times[name]),
            "examples_per_s": summary([n / t for t in times[name]]),
            "exact_accuracy": exact,
        }
    steps = results["act"][1].cpu()
    out["act"]["mean_steps"] = steps.float().mean().item()
    out["act"]["steps_histogram"] = {
        int(k): int(v) for k, v in sorted(Counter(steps.tolist()).items())
    }
    out["speedup_act_vs_fixed"] = summary([f / a for f, a in zip(times["fixed"], times["act"])])
    out["speedup_act_vs_rollout"] = summary([r / a for r, a in zip(times["rollout"], times["act"])])
    out["exact_drop_points"] = 100 * (out["fixed"]["exact_accuracy"] - out["act"]["exact_accuracy"])
    return out


def show(res: dict[str, Any]) -> list[dict[str, str]]:
    fixed = res["fixed"]["examples_per_s"]["median"]
    rows = []
    for name, what in (("rollout", "rollout, 16 steps (library eval)"),
                       ("fixed", "predict(halt=False), 16 steps"),
                       ("act", "predict(halt=True), ACT halting")):  # fmt: skip
        r = res[name]
        if name == "act":
            speedup = fmt_spread(res["speedup_act_vs_fixed"], digits=2, unit="x")
        else:
            speedup = f"{r['examples_per_s']['median'] / fixed:.2f}x"
        rows.append({
            "what": what,
            "ex_s": fmt_spread(r["examples_per_s"], digits=0),
            "exact": f"{100 * r['exact_accuracy']:.2f}%",
            "steps": f"{r.get('mean_steps', 16):.2f}",
            "speedup": speedup,
        })  # fmt: skip
    return rows


COLUMNS = [("what", "evaluation"), ("ex_s", "examples/s"), ("exact", "exact accuracy"),
           ("steps", "mean ACT steps"), ("speedup", "vs fixed 16 steps")]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", type=int, default=2048, help="held-out puzzles")
    ap.add_argument("--batch", type=int, default=256, help="evaluation batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--retrain", action="store_true", help="ignore the cached weights")
    ap.add_argument("--weights", default=str(RESULTS / "inference_model.pt"))
    ap.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.test < 1 or a.batch < 1 or a.repeats < 1:
        ap.error("--test, --batch and --repeats must be >= 1")
    device = pick_device(a.device)
    if device.type == "cpu":
        set_threads(a.threads)
    clock = headline_clock(device, a.clock)
    recipe = QUICK_RECIPE if a.quick else RECIPE
    if a.quick:
        a.test, a.batch, a.repeats = 64, 32, 1
    result: dict[str, Any] = {"machine": machine(device, clock), "model": MODEL, "recipe": recipe}
    model, info = load_or_train(recipe, None if a.quick else Path(a.weights), a.retrain)
    result["training"] = info
    model = model.to(device)
    test = held_out(recipe, a.test)
    result["results"] = evaluate(model, test, a.batch, device, clock, a.repeats)
    rows = show(result["results"])
    print(table(rows, COLUMNS))
    r = result["results"]
    print(f"\nACT halting: {fmt_spread(r['speedup_act_vs_fixed'], digits=2, unit='x')} the "
          f"examples/s of fixed 16-step evaluation, exact accuracy {r['exact_drop_points']:+.2f} "
          f"points lower; halting steps {r['act']['steps_histogram']}")  # fmt: skip
    save(result, "inference", device, a.quick, a.out)
    return result


if __name__ == "__main__":
    main()

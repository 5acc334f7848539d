"""Evaluate a trained checkpoint on a dataset, or watch it solve one puzzle.

    python pipeline/evaluate.py runs/tiny                           # newest complete checkpoint
    python pipeline/evaluate.py runs/tiny/checkpoint_00000012 --data data/sudoku-4x4-other
    python pipeline/evaluate.py s3://bucket/runs/tiny --json --set eval.max_examples=0
    python pipeline/evaluate.py runs/tiny --mlflow                  # logged as a new MLflow run
    python pipeline/evaluate.py runs/tiny --set eval.protocol=fixed_depth --set eval.trajectories=8
    python pipeline/evaluate.py runs/tiny --puzzle "1.3434.22.4343.1"  # Sudoku, '.' or '0' blank

CHECKPOINT is a checkpoint directory (it holds `trainer.pt`), a run directory (its newest
complete checkpoint is used, and damaged ones are named and skipped) or a training sweep's
directory (its summary's best checkpoint) (`pipeline.checkpoints.restore`).
Local paths and s3:// both work. The model carries the weights training evaluates with (the
EMA averages when the run kept them).

Evaluation runs the training run's own `Evaluator` (pipeline/evaluation/evaluator.py) with the run's
config: the same test split, batch size, `eval.max_examples`, depth steps and halting
thresholds, so the numbers are those training logged at that step. Differences: `--data`
(default: the run's `data.uri`) may name any dataset with the model's encoding (seq_len,
vocab_size; puzzle identifiers within the model's table); `--set eval.KEY=VALUE` changes the
evaluation; and it runs as one process, so for a run trained on several workers with
`eval.max_examples` set, the examples evaluated are the first ones of the split rather than
each worker's share. Output: the metrics by name, the halting-threshold curve and the depth
curve; `--json` prints one JSON object keyed by the MLflow metric names (e.g.
`eval/exact_accuracy`, `depth_curve/exact_accuracy_at_step_<k>`) plus `step`, `checkpoint`,
`data`, `split` and, with --mlflow, `mlflow_run_id`.
`--mlflow` logs them, with the depth and halting curves, as a new MLflow run (tracking URI:
$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db, as training) in the training run's
experiment, tagged `trm.source_run_id` (the training run) and `trm.checkpoint`.

A test-time setting in `--set` (any of eval.protocol, depth, max_steps, trajectories,
noise_std, select, halt_threshold other than its default) evaluates it instead, as an
evaluate-mode sweep's trial does (pipeline/evaluation/trajectories.py): e.g. the Probabilistic
TRM protocol, `--set eval.protocol=fixed_depth --set eval.depth=16 --set eval.trajectories=8
--set eval.noise_std=0.2`, reports best-Q@K, mode@K and pass@K of the same 8 trajectories as
`eval/fixed_depth/{best_q,mode,pass_at_k}_exact_accuracy`. With fixed_depth, one trajectory and
no noise at depth halt_max_steps, `eval/exact_accuracy` is the ordinary evaluation's.

`--puzzle` runs the model on one puzzle and prints its answer after each ACT step, marking
the step where the model halts: the first step where `trm.model.should_halt` says stop at the
model's `halt_threshold` (at the latest halt_max_steps), the answer `TRM.predict` gives.
`--max-steps` runs more (or fewer) steps. Sudoku: digits, '.' or '0' for blanks, size*size
characters row-major; the answer is checked as a Sudoku (every row, column and box holds each
digit once, the clues kept). Maze: the maze's characters `# SGo` as the dataset encodes them.

Bad input (a missing checkpoint, a dataset of another encoding, a malformed puzzle, an unknown
--set key) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoints.restore import Restored, check_fits, restore
from pipeline.checkpoints.store import CheckpointError
from pipeline.config.run import ConfigError
from pipeline.data.errors import DatasetError

SOURCE_RUN_TAG = "trm.source_run_id"
CHECKPOINT_TAG = "trm.checkpoint"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python pipeline/evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint or run directory, local or s3://")
    p.add_argument("--data", help="dataset URI (default: the run's data.uri)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="override an eval.* config key (repeatable; value is YAML)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object of the metrics")
    p.add_argument("--mlflow", action="store_true", help="log the metrics as a new MLflow run")
    p.add_argument("--puzzle", help="solve this one puzzle instead, printing every ACT step")
    p.add_argument("--max-steps", type=int, help="ACT steps for --puzzle (default halt_max_steps)")
    p.add_argument("--device", default="", help="cpu, cuda, ... (default: cuda when present)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        with contextlib.ExitStack() as stack:
            _check_args(args)
            device = _device(args.device)
            r = restore(args.checkpoint, stack, device=device, say=say)
            if args.puzzle is not None:
                from pipeline.evaluation.solve import solve_one

                print(solve_one(r, args.puzzle, args.data, args.max_steps))
                return 0
            result = evaluate_checkpoint(r, args, device, say)
    except (ConfigError, CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # storage out of reach, a failure inside the model, ...
        print(f"error: evaluation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else report(result))
    return 0


def _device(name: str) -> torch.device:
    """--device, or the training default (cuda when present)."""
    from pipeline.training.worker import default_device

    try:
        return torch.device(name) if name else default_device()
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r}: {e}") from None


def _check_args(args: argparse.Namespace) -> None:
    """Bad arguments are errors before the checkpoint is read."""
    for kv in args.overrides:
        if not kv.startswith("eval."):
            raise ConfigError(f"--set {kv}: only eval.* keys can be set when evaluating")
    if "://" not in args.checkpoint and not Path(args.checkpoint).exists():
        raise CheckpointError(f"checkpoint {args.checkpoint!r}: no such file or directory")
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be a positive integer, got {args.max_steps}")
    if args.max_steps is not None and args.puzzle is None:
        raise ConfigError("--max-steps goes with --puzzle (evaluation uses eval.depth_steps)")


def evaluate_checkpoint(
    r: Restored, args: argparse.Namespace, device: torch.device, say: Callable[[str], None]
) -> dict[str, Any]:
    """The training run's evaluation of `r` on `args.data` (default: its own dataset)."""
    from pipeline.data.meta import read_meta
    from pipeline.data.storage import absolute
    from pipeline.evaluation.evaluator import Evaluator
    from pipeline.tracking.tracker import depth_curve_metrics

    data = absolute(args.data or r.config.data.uri)
    cfg = r.config.with_values({"data.uri": data}).with_overrides(args.overrides)
    meta = read_meta(data)
    check_fits(r, meta, data)
    if args.split not in meta.splits:
        raise DatasetError(f"the dataset at {data} has no split {args.split!r} "
                           f"(it has {', '.join(sorted(meta.splits))})")  # fmt: skip
    tracker = _tracker(r, cfg, meta, data) if args.mlflow else None
    head = {"step": r.step, "checkpoint": r.checkpoint, "data": data, "split": args.split}
    if is_test_time(cfg.eval):  # a setting of an evaluate-mode sweep: TRM.predict's metrics
        return _test_time_result(r, cfg, device, args.split, head, tracker, say)
    evaluator = Evaluator(cfg, meta, r.model_config.halt_max_steps, rank=0, world=1,
                          device=device, tracker=tracker or _null(), say=say, name=cfg.name,
                          halt_threshold=r.model_config.halt_threshold)  # fmt: skip
    evaluator.split = args.split
    try:
        metrics = evaluator(r.model, r.step)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    result = {**head, **metrics, **depth_curve_metrics(evaluator.last_curve)}
    if tracker is not None:  # the Evaluator logged the metrics and curves
        _finish(tracker, result, say)
    return result


def is_test_time(e: Any) -> bool:
    """Whether the eval section asks for a test-time setting (a protocol, K trajectories, noise,
    a step cap or depth, threshold or selection) rather than the training run's evaluation."""
    return (e.trajectories != 1 or e.noise_std != 0 or e.max_steps != 0 or e.depth != 0
            or e.halt_threshold is not None or e.select != "q_halt"
            or e.protocol != "act")  # fmt: skip


def _test_time_result(r, cfg, device, split, head, tracker, say) -> dict[str, Any]:
    """The test-time setting (protocol, K trajectories, ...), as an evaluate-mode sweep's trial
    measures it (`pipeline.evaluation.trajectories.evaluate_test_time`)."""
    from pipeline.evaluation.trajectories import evaluate_test_time

    e = cfg.eval
    steps = e.steps() or "halt_max_steps"
    limit = (
        f"depth={steps}"
        if e.protocol == "fixed_depth"
        else f"max_steps={steps} halt_threshold={e.halt_threshold or 'the model' + chr(39) + 's'}"
    )
    say(f"test-time setting: protocol={e.protocol} {limit} trajectories={e.trajectories} "
        f"noise_std={e.noise_std} select={e.select} seed={e.seed}")  # fmt: skip
    try:
        result = {**head, **evaluate_test_time(r.model, cfg, device, split)}
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in result.items() if k.startswith("eval/")}, r.step)
        _finish(tracker, result, say)
    return result


def _finish(tracker: Any, result: dict[str, Any], say: Callable[[str], None]) -> None:
    tracker.finish("FINISHED")
    result["mlflow_run_id"] = tracker.run_id
    say(f"MLflow: logged as run {tracker.run_id} ({tracker.url})")


def _null() -> Any:
    from pipeline.tracking.tracker import NullTracker

    return NullTracker()


def _tracker(r: Restored, cfg: Any, meta: Any, data: str) -> Any:
    """A new MLflow run for this evaluation, in the training run's experiment."""
    from pipeline.tracking.provenance import code_version
    from pipeline.tracking.server import resolve_tracking_uri
    from pipeline.tracking.tracker import Tracker

    return Tracker(
        resolve_tracking_uri(),
        cfg.tracking.experiment,
        run_name=f"eval-{cfg.name}-step{r.step}",
        run_key=f"eval {r.checkpoint} on {data} at {time.time_ns()}",  # a new run every time
        params={
            **{k: v for k, v in cfg.flat().items() if k.startswith("eval.")},
            "data.uri": data,
            "step": r.step,
        },
        tags={
            SOURCE_RUN_TAG: r.mlflow_run_id,
            CHECKPOINT_TAG: r.checkpoint,
            "task": meta.task,
            "dataset": data,
            "code_version": code_version(),
            "trm.kind": "evaluation",
        },
    )


def report(result: dict[str, Any]) -> str:
    """The human-readable form of `evaluate_checkpoint`'s result."""
    from pipeline.evaluation.evaluator import halt_curve

    lines = [f"checkpoint {result['checkpoint']} (step {result['step']})",
             f"data {result['data']} ({result['split']} split)"]  # fmt: skip
    for k, v in result.items():
        if k.startswith("eval/") and "/halt_tau_" not in k:
            lines.append(f"  {k:32s} {v:.6g}")
    taus = [float(k.split("/")[1][len("halt_tau_") :])
            for k in result if k.startswith("eval/halt_tau_") and k.endswith("/steps")]  # fmt: skip
    if taus:
        lines.append("halting-threshold curve (tau: mean steps, exact accuracy at halt)")
        for p in halt_curve(result, taus):
            lines.append(f"  {p['tau']:<5g} {p['steps']:7.3f} {p['exact_accuracy']:8.4f}")
    prefix = "depth_curve/exact_accuracy_at_step_"
    curve = sorted((int(k[len(prefix) :]), v) for k, v in result.items() if k.startswith(prefix))
    if curve:
        lines.append("depth curve (ACT steps: exact accuracy)")
        lines += [f"  {k:3d} {v:.4f}" for k, v in curve]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Train a TRM: data parallel on Ray Train, data streamed from a local or s3:// dataset,
checkpoints to a local or s3:// storage path, metrics and pictures in MLflow.

    python pipeline/train.py configs/sudoku_tiny.yaml
    python pipeline/train.py configs/sudoku_tiny.yaml --set resources.num_workers=2 \
        --set data.uri=s3://bucket/sudoku-4x4 --set checkpoint.storage_path=s3://bucket/runs
    python pipeline/train.py configs/sudoku_tiny.yaml --local      # one process, no Ray
    python pipeline/train.py --help                                # every config key

Three layers, as in Ray's Train + Tune examples: `pipeline.training.worker.train_loop_per_worker` runs on
each worker, `run_training` builds the `TorchTrainer` and fits it, and a sweep
(pipeline/sweep.py) calls `train_prepared` (or `pipeline.training.worker.run_in_process` for
1-worker trials) per trial. Every check that can fail without a GPU or a worker (config values, dataset
present and matching the model, storage writable, paths readable on every node) runs before any
worker starts (pipeline/training/preflight.py), once: `prepare_run` turns the config into a
`PreparedRun` (pipeline/training/prepared.py) that the layers below pass on.

Re-running the same `name` with the same storage path resumes from its latest checkpoint;
a changed model or batch size is refused before any worker starts (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.checkpoints.directory import CheckpointStore
from pipeline.config.run import ConfigError, RunConfig, describe
from pipeline.data.storage import absolute, is_local
from pipeline.training.cluster import (
    checkpoint_config,
    cluster_nodes,
    connect_ray,
    decide_use_gpu,
    scaling_config,
)
from pipeline.training.preflight import check_on_nodes
from pipeline.training.prepared import PreparedRun, prepare_run
from pipeline.training.worker import RunInfo, loop_config, run_in_process


# ---- the driver -----------------------------------------------------------------------------
def run_info(cfg: RunConfig, name: str, storage_path: str, parent_run_id: str = "") -> RunInfo:
    """The `RunInfo` of an in-process run of `cfg` (no checks: `prepare_run` checks)."""
    from pipeline.tracking.server import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.uri) if cfg.tracking.enabled else ""
    return PreparedRun(cfg, name, storage_path, uri).info(parent_run_id)


def build_trainer(run: PreparedRun, callbacks: Sequence[Any] = (), parent_run_id: str = "") -> Any:
    """The `TorchTrainer` of a prepared run; its local paths are checked on every node first
    (a cluster of more than one node)."""
    import ray.train

    from pipeline.training.failures import TorchTrainer
    from pipeline.training.worker import train_loop_per_worker

    cfg = run.cfg
    check_on_nodes(cfg, run.storage_path)
    use_gpu = decide_use_gpu(cfg, cluster_nodes())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, run.info(parent_run_id)),
        scaling_config=scaling_config(cfg, use_gpu),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=checkpoint_config(cfg.checkpoint),
            callbacks=list(callbacks),
        ),
    )


def checkpoint_uri(checkpoint: Any) -> str:
    """A checkpoint's location as a URI (s3://... or an absolute path)."""
    fs = type(checkpoint.filesystem).__name__
    return f"s3://{checkpoint.path}" if fs == "S3FileSystem" else checkpoint.path


def run_training(
    cfg: RunConfig,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: Sequence[Any] = (),
    parent_run_id: str = "",
) -> Any:
    """Check, then train `cfg` on a Ray Train worker group; returns the `ray.train.Result`.

    Starts a local Ray cluster when none is connected. `name` (default `cfg.name`) and
    `storage_path` (default `cfg.checkpoint.storage_path`) fix the run directory: the same
    pair resumes from the latest checkpoint. The MLflow run gets the final and best checkpoint
    locations as tags. Raises the run's error if it failed after all retries.
    """
    connect_ray(None, reuse=True)
    run = prepare_run(cfg, name=name, storage_path=storage_path)
    return train_prepared(run, callbacks, parent_run_id)


def train_prepared(run: PreparedRun, callbacks: Sequence[Any] = (), parent_run_id: str = "") -> Any:
    """`run_training` of a run prepared already (Ray connected)."""
    cfg = run.cfg
    trainer = build_trainer(run, callbacks, parent_run_id)
    try:
        result = trainer.fit()
    except Exception as e:
        raise _storage_named(e, run.storage_path) from e
    if run.tracking_uri and result.checkpoint is not None:
        from pipeline.tracking.tracker import tag_run

        tags = {"checkpoint.final": checkpoint_uri(result.checkpoint)}
        if result.best_checkpoints:
            best = max(result.best_checkpoints, key=lambda cm: _rank(cm[1], cfg.checkpoint.mode))
            tags["checkpoint.best"] = checkpoint_uri(best[0])
        run_id = tag_run(run.tracking_uri, cfg.tracking.experiment, run.run_dir, tags)
        best_ckpt = best[0] if result.best_checkpoints else result.checkpoint
        if run_id is not None:
            log_models(run.tracking_uri, run_id, {"final": result.checkpoint, "best": best_ckpt})
    return result


def _rank(metrics: dict[str, Any], mode: str) -> tuple[float, int]:
    """How a checkpoint reported with `metrics` ranks for `checkpoint.best`: by its
    `clock.SCORE` (what Ray Train's retention kept it by), the earliest of equal scores, as
    `CheckpointStore.best` ranks a directory's checkpoints."""
    from pipeline.checkpoints.clock import SCORE

    value = float(metrics.get(SCORE, -math.inf if mode == "max" else math.inf))
    return (value if mode == "max" else -value), -int(metrics.get("step", 0))


def log_models(uri: str, run_id: str, checkpoints: dict[str, Any]) -> None:
    """Log each Ray Train checkpoint's model (weights + config) to the MLflow run as
    `checkpoints/<which>/model.pt` (`pipeline.checkpoints.restore.load_model` reads it back)."""
    from pipeline.checkpoints import store as ckpt
    from pipeline.tracking.tracker import log_model

    for which, checkpoint in checkpoints.items():
        with checkpoint.as_directory() as d:
            log_model(uri, run_id, which, ckpt.load(d, ckpt.TRAINER_FILE))


def _storage_named(error: Exception, storage_path: str) -> Exception:
    """`error`, or a StorageError naming the S3 endpoint when the run died on checkpoint storage:
    Ray Train's uploads and its run snapshot go through pyarrow, whose errors name a bucket and
    key but often not the endpoint ('Empty reply from server')."""
    if not storage_path.startswith("s3://") or "AWS Error" not in str(error):
        return error
    from pipeline.data.errors import StorageError
    from pipeline.data.storage import open_storage

    endpoint = open_storage(storage_path).endpoint
    return StorageError(
        f"checkpoint storage {storage_path} at S3 endpoint {endpoint} failed: "
        f"{type(error).__name__}: {error}"
    )


def run_local(run: PreparedRun) -> dict[str, float]:
    """The same loop in this process (no Ray; `run` on a local storage path, one worker)."""
    cfg, info = run.cfg, run.info()
    metrics = run_in_process(cfg, info)
    store = CheckpointStore(run.run_dir)
    with contextlib.ExitStack() as stack:
        final = (store.newest_complete(stack) or ("", ""))[0]
    if info.tracking_uri and final:
        from pipeline.checkpoints import store as ckpt
        from pipeline.tracking.tracker import log_model, tag_run

        best = store.best(cfg.checkpoint.metric, cfg.checkpoint.mode)[0] or final
        run_id = tag_run(info.tracking_uri, cfg.tracking.experiment, info.run_key,
                         {"checkpoint.final": final, "checkpoint.best": best})  # fmt: skip
        if run_id is not None:
            for which, path in (("final", final), ("best", best)):
                log_model(info.tracking_uri, run_id, which, ckpt.load(path, ckpt.TRAINER_FILE))
    return metrics


# ---- CLI ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python pipeline/train.py",
        description=(
            "Train a Tiny Recursive Model (deep supervision, ACT, EMA) on Ray Train.\n"
            "CONFIG is a YAML file with the sections below; --set overrides any key."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config keys (section.key: type = default):\n\n" + describe()
        + "\n\nMLflow: runs go to $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; "
        "open the latter with\n  mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db",
    )  # fmt: skip
    p.add_argument("config", help="run config YAML (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.H_cycles=2 (repeatable; value is YAML)",
    )
    p.add_argument("--name", help="run name (default: the config's name)")
    p.add_argument("--storage-path", help="override checkpoint.storage_path")
    p.add_argument("--local", action="store_true", help="one process, no Ray (debugging)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over: discard the checkpoints of this name (and detach its MLflow run)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check config, dataset and storage; print; exit"
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address (default: $RAY_ADDRESS, else a new local cluster)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = _prepared(args)
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(run.cfg.to_dict(), sort_keys=False), end="")
            m = run.meta
            print(f"# dataset: {m.task}, seq_len {m.seq_len}, vocab {m.vocab_size}")
            print(f"# storage: {run.run_dir}")
            return 0
        _prepare_resume(run, fresh=args.fresh)
        if args.local:
            metrics = run_local(run)
            print(_final_line(metrics, run.cfg))
            _print_mlflow_link(run)
            return 0
        connect_ray(args.address, reuse=True)
        result = train_prepared(run)
    except (
        ConfigError,
        ConnectionError,
    ) as e:  # ConnectionError: pipeline.tracking.tracker's check
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the worker's error: at once if deterministic, else after retries
        from pipeline.training.failures import root_cause

        print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        return 1
    print(_final_line(result.metrics or {}, run.cfg))
    if result.checkpoint is not None:
        print(f"final checkpoint: {checkpoint_uri(result.checkpoint)}")
    _print_mlflow_link(run)
    return 0


def _prepared(args: argparse.Namespace) -> PreparedRun:
    """The run the command line asks for, checked once, before Ray starts (a dead tracking
    server or a missing dataset is one line now, not minutes of retries later)."""
    given = {"name": args.name, "checkpoint.storage_path": args.storage_path}
    cfg = RunConfig.from_yaml(args.config, args.overrides)
    cfg = cfg.with_values({k: v for k, v in given.items() if v})  # strings, as typed
    if args.local:
        if not is_local(absolute(cfg.checkpoint.storage_path)):
            raise ConfigError("--local keeps checkpoints on a local checkpoint.storage_path only")
        cfg = cfg.with_values({"resources.num_workers": 1})
    say = (lambda line: print(f"# {line}")) if args.dry_run else None
    return prepare_run(cfg, say=say)


def _prepare_resume(run: PreparedRun, fresh: bool) -> None:
    """`--fresh`: discard the run of this name (and retire its MLflow run); then refuse a
    resume that its checkpoints cannot take (pipeline/checkpoints/resume.py)."""
    from pipeline.checkpoints.resume import check_resume, discard_run, resolved

    if fresh:
        discard_run(run.run_dir)
        if run.tracking_uri:
            from pipeline.tracking.tracker import retire_run

            retire_run(run.tracking_uri, run.cfg.tracking.experiment, run.run_dir)
    check_resume(run.run_dir, resolved(run.cfg, run.cfg.resolve(run.meta).to_dict()))


def _print_mlflow_link(run: PreparedRun) -> None:
    """The run's page on a tracking server, else how to open the local store."""
    if not run.tracking_uri:
        return
    from pipeline.tracking.server import run_link
    from pipeline.tracking.tracker import find_run

    run_id = find_run(run.tracking_uri, run.cfg.tracking.experiment, run.run_dir)
    print(f"MLflow: {run_link(run.tracking_uri, run_id) if run_id else run.tracking_uri}")


def _final_line(metrics: dict[str, Any], cfg: RunConfig) -> str:
    keys = ("step", "train/loss", "eval/exact_accuracy", "eval/accuracy")
    return f"[{cfg.name}] final: " + ", ".join(
        f"{k}={metrics[k]:.4g}" for k in keys if k in metrics
    )


if __name__ == "__main__":
    sys.exit(main())

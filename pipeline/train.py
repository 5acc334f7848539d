"""Train a TRM: data parallel on Ray Train, data streamed from a local or s3:// dataset,
checkpoints to a local or s3:// storage path, metrics and pictures in MLflow.

    python pipeline/train.py configs/sudoku_tiny.yaml
    python pipeline/train.py configs/sudoku_tiny.yaml --set resources.num_workers=2 \
        --set data.uri=s3://bucket/sudoku-4x4 --set checkpoint.storage_path=s3://bucket/runs
    python pipeline/train.py configs/sudoku_tiny.yaml --local      # one process, no Ray
    python pipeline/train.py --help                                # every config key

Three layers, as in Ray's Train + Tune examples: `pipeline.training.worker.train_loop_per_worker` runs on
each worker, `run_training` builds the `TorchTrainer` and fits it, and a sweep
(pipeline/sweep.py) calls `run_training` (or `pipeline.training.worker.run_in_process` for 1-worker
trials) per trial. Every check that can fail without a GPU or a worker (config values, dataset
present and matching the model, storage writable, paths readable on every node) runs before any
worker starts (pipeline/training/preflight.py).

Re-running the same `name` with the same storage path resumes from its latest checkpoint;
a changed model or batch size is refused before any worker starts (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.checkpoints.store import latest_local_checkpoint
from pipeline.config.run import ConfigError, RunConfig, describe
from pipeline.data.storage import absolute, is_local
from pipeline.training.cluster import (
    checkpoint_config,
    cluster_nodes,
    connect_ray,
    decide_use_gpu,
    scaling_config,
)
from pipeline.training.preflight import preflight
from pipeline.training.schedule import with_epoch_steps
from pipeline.training.worker import RunInfo, loop_config, run_in_process


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """Local data and storage paths made absolute here: workers run in other directories."""
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"uri": absolute(cfg.data.uri)}),
            "checkpoint": cfg.checkpoint.model_copy(
                update={"storage_path": absolute(cfg.checkpoint.storage_path)}
            ),
        }
    )


# ---- the driver -----------------------------------------------------------------------------
def run_info(cfg: RunConfig, name: str, storage_path: str, parent_run_id: str = "") -> RunInfo:
    """Resolve, on the driver, what workers cannot: tracking URI (absolute), code version."""
    from pipeline.tracking.provenance import code_version
    from pipeline.tracking.server import resolve_tracking_uri

    return RunInfo(
        name=name,
        run_key=f"{storage_path}/{name}",
        tracking_uri=resolve_tracking_uri(cfg.tracking.uri) if cfg.tracking.enabled else "",
        code_version=code_version(),
        parent_run_id=parent_run_id,
    )


def build_trainer(
    cfg: RunConfig,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: Sequence[Any] = (),
    parent_run_id: str = "",
    check: bool = True,
) -> Any:
    """The `TorchTrainer` of a run (checks run first when `check`)."""
    import ray.train

    from pipeline.training.failures import TorchTrainer
    from pipeline.training.worker import train_loop_per_worker

    name = name or cfg.name
    cfg = with_absolute_paths(cfg)
    storage_path = absolute(storage_path or cfg.checkpoint.storage_path)
    if check:
        preflight(cfg, storage_path, cluster=True)
    cfg = with_epoch_steps(cfg)  # nothing to do when `main` (or a sweep) converted it
    info = run_info(cfg, name, storage_path, parent_run_id)
    use_gpu = decide_use_gpu(cfg, cluster_nodes())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, info),
        scaling_config=scaling_config(cfg, use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
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
    name = name or cfg.name
    storage_path = absolute(storage_path or cfg.checkpoint.storage_path)
    trainer = build_trainer(
        cfg, name=name, storage_path=storage_path, callbacks=callbacks, parent_run_id=parent_run_id
    )
    try:
        result = trainer.fit()
    except Exception as e:
        raise _storage_named(e, storage_path) from e
    if cfg.tracking.enabled and result.checkpoint is not None:
        from pipeline.tracking.server import resolve_tracking_uri
        from pipeline.tracking.tracker import tag_run

        tags = {"checkpoint.final": checkpoint_uri(result.checkpoint)}
        if result.best_checkpoints:
            best = max(result.best_checkpoints, key=lambda cm: _rank(cm[1], cfg.checkpoint.mode))
            tags["checkpoint.best"] = checkpoint_uri(best[0])
        uri = resolve_tracking_uri(cfg.tracking.uri)
        run_id = tag_run(uri, cfg.tracking.experiment, f"{storage_path}/{name}", tags)
        best_ckpt = best[0] if result.best_checkpoints else result.checkpoint
        if run_id is not None:
            log_models(uri, run_id, {"final": result.checkpoint, "best": best_ckpt})
    return result


def _rank(metrics: dict[str, Any], mode: str) -> tuple[float, int]:
    """How a checkpoint reported with `metrics` ranks for `checkpoint.best`: by its
    `clock.SCORE` (what Ray Train's retention kept it by), the earliest of equal scores, as
    `retention.best_checkpoint` ranks a directory's checkpoints."""
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


def run_local(cfg: RunConfig, *, name: str | None = None, storage_path: str | None = None):
    """The same loop in this process (no Ray); checkpoints under a local storage path."""
    name = name or cfg.name
    storage_path = absolute(storage_path or cfg.checkpoint.storage_path)
    if not is_local(storage_path):
        raise ConfigError("--local keeps checkpoints on a local checkpoint.storage_path only")
    cfg = with_absolute_paths(cfg.with_overrides(["resources.num_workers=1"]))
    preflight(cfg, storage_path, cluster=False)
    cfg = with_epoch_steps(cfg.with_overrides([f"checkpoint.storage_path={storage_path}"]))
    info = run_info(cfg, name, storage_path)
    metrics = run_in_process(cfg, info)
    final = latest_local_checkpoint(Path(storage_path) / name)
    if info.tracking_uri and final:
        from pipeline.checkpoints import store as ckpt
        from pipeline.checkpoints.retention import best_checkpoint
        from pipeline.tracking.tracker import log_model, tag_run

        best = best_checkpoint(str(Path(storage_path) / name), cfg.checkpoint.metric,
                               cfg.checkpoint.mode)[0] or final  # fmt: skip
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
        cfg = RunConfig.from_yaml(args.config, args.overrides)
        if args.name:
            cfg = cfg.with_overrides([f"name={args.name}"])
        if args.storage_path:
            cfg = cfg.with_overrides([f"checkpoint.storage_path={args.storage_path}"])
        storage = absolute(cfg.checkpoint.storage_path)
        if args.dry_run:
            import yaml

            meta = preflight(cfg, storage, cluster=False)
            cfg = with_epoch_steps(cfg, lambda line: print(f"# {line}"))
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            print(f"# dataset: {meta.task}, seq_len {meta.seq_len}, vocab {meta.vocab_size}")
            print(f"# storage: {storage}/{cfg.name}")
            return 0
        if cfg.tracking.enabled:  # before Ray's start-up; preflight checks it again
            from pipeline.tracking.server import check_tracking, resolve_tracking_uri

            check_tracking(resolve_tracking_uri(cfg.tracking.uri))
        cfg = _prepare_resume(cfg, storage, fresh=args.fresh)
        if args.local:
            metrics = run_local(cfg)
            print(_final_line(metrics, cfg))
            _print_mlflow_link(cfg)
            return 0
        connect_ray(args.address, reuse=True)
        result = run_training(cfg)
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
    print(_final_line(result.metrics or {}, cfg))
    if result.checkpoint is not None:
        print(f"final checkpoint: {checkpoint_uri(result.checkpoint)}")
    _print_mlflow_link(cfg)
    return 0


def _prepare_resume(cfg: RunConfig, storage: str, fresh: bool) -> RunConfig:
    """`--fresh`: discard the run of this name; convert `schedule.epochs` to steps (once, here,
    so the stored run config holds them); then refuse a resume that its checkpoints cannot
    take (pipeline/checkpoints/resume.py). Returns the converted config."""
    from pipeline.checkpoints.resume import check_resume, discard_run, resolved
    from pipeline.training.preflight import check_dataset

    run_dir = f"{storage}/{cfg.name}"
    if fresh:
        discard_run(run_dir)
        if cfg.tracking.enabled:
            from pipeline.tracking.server import resolve_tracking_uri
            from pipeline.tracking.tracker import retire_run

            retire_run(resolve_tracking_uri(cfg.tracking.uri), cfg.tracking.experiment, run_dir)
    meta = check_dataset(cfg)
    cfg = with_epoch_steps(cfg)
    check_resume(run_dir, resolved(cfg, cfg.resolve(meta).to_dict()))
    return cfg


def _print_mlflow_link(cfg: RunConfig) -> None:
    """The run's page on a tracking server, else how to open the local store."""
    if not cfg.tracking.enabled:
        return
    from pipeline.tracking.server import resolve_tracking_uri, run_link
    from pipeline.tracking.tracker import find_run

    uri = resolve_tracking_uri(cfg.tracking.uri)
    storage = absolute(cfg.checkpoint.storage_path)
    run_id = find_run(uri, cfg.tracking.experiment, f"{storage}/{cfg.name}")
    print(f"MLflow: {run_link(uri, run_id) if run_id else uri}")


def _final_line(metrics: dict[str, Any], cfg: RunConfig) -> str:
    keys = ("step", "train/loss", "eval/exact_accuracy", "eval/accuracy")
    return f"[{cfg.name}] final: " + ", ".join(
        f"{k}={metrics[k]:.4g}" for k in keys if k in metrics
    )


if __name__ == "__main__":
    sys.exit(main())

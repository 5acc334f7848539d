"""The command line of `python pipeline/sweep.py` (also `trm-sweep`): parse, load the sweep
file, then list its trials (`--dry-run`) or run it (`pipeline.sweeping.run.run_sweep`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config.run import ConfigError
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.exits import EXIT_CONFIG, EXIT_INTERRUPTED
from pipeline.sweeping.store import load_sweep, stored_sweep, sweep_started

"""Exit statuses besides 0 (`main`)."""
DEFAULT_SWEEP = Path(__file__).resolve().parents[2] / "sweeps" / "default.yaml"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python pipeline/sweep.py",
        description=(
            "Sweep TRM run configs with Ray Tune (grid/random/Optuna search, FIFO/ASHA, compute "
            "budget), tracked in MLflow.\nWithout arguments: the CPU default sweep "
            "(sweeps/default.yaml) on a local Ray cluster."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Sweep file format: see pipeline/sweeping/config.py and sweeps/*.yaml. Config keys: "
            "python pipeline/train.py --help.\nMLflow: $MLFLOW_TRACKING_URI, else "
            "sqlite:///<cwd>/mlflow.db (mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db)"
        ),
    )
    p.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="sweep file (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base run config key, e.g. --set data.uri=s3://b/sudoku (repeatable)",
    )
    p.add_argument("--name", help="sweep name (default: the file's `name`)")
    p.add_argument(
        "--checkpoint",
        help="evaluate-mode sweeps: the checkpoint or run directory to evaluate, local or "
        "s3:// (default: the file's `checkpoint`)",
    )
    p.add_argument(
        "--storage-path", help="where the sweep lives (default: base checkpoint.storage_path)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=("yes", "auto"),
        help="continue an interrupted sweep; `--resume auto`: continue the sweep of this name "
        "when its storage holds one, else start it (one command for a job that may be "
        "submitted again after a failure)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the sweep file and list its trials; no Ray"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, as `ray job submit` sets it; "
        "else a new local cluster)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local cluster")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 every trial completed or was stopped by the scheduler or the budget; 1 a
    trial ended in an error (the summary names it); 2 a configuration error (or a tracking
    server that does not answer) before any trial; 130 interrupted (Ctrl-C, SIGTERM)."""
    args = parse_args(argv)
    _sigterm_as_ctrl_c()
    try:
        sweep, text, exp_path = load_sweep(
            args.sweep, args.overrides, args.storage_path, args.name, args.checkpoint
        )
        resume = args.resume == "yes" or (args.resume == "auto" and sweep_started(exp_path))
        if args.resume == "auto":
            verb = "continuing the sweep stored" if resume else "no sweep yet; starting it"
            print(f"[sweep] --resume auto: {verb} at {exp_path}", flush=True)
        if resume:
            sweep, text = stored_sweep(sweep, exp_path)
        if args.dry_run:
            print(dry_run_text(sweep, exp_path))
            return 0
        import ray

        from pipeline.sweeping.run import run_sweep  # Ray, Tune, MLflow: not for a dry run

        connected = ray.is_initialized()
        outcome = run_sweep(
            sweep, text, exp_path, resume=resume, address=args.address, num_cpus=args.num_cpus
        )
    except (ConfigError, ConnectionError) as e:  # ConnectionError: the tracking server check
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Tune ran or after it stopped
        print("error: the sweep was interrupted; continue it with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not connected:
        # Ray prints its deduplicated worker lines when the driver disconnects: before the
        # summary, so the summary is the last thing on the console (and in a job's log)
        ray.shutdown()
    print("\n" + outcome.console_text(), flush=True)
    return outcome.exit_code


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (`kill`, a job's cancellation) stops the sweep as Ctrl-C does: Tune saves its
    state and returns, and the parent run ends KILLED instead of staying RUNNING."""
    import os
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def dry_run_text(sweep: SweepConfig, exp_path: str) -> str:
    lines = [
        f"sweep {sweep.name!r}: {sweep.num_trials} trial(s) "
        f"({sweep.search.algorithm}, {sweep.search.num_samples} sample(s) per grid point), "
        f"scheduler {sweep.scheduler.type}, metric {sweep.search.metric} ({sweep.search.mode})",
        f"storage: {exp_path}",
    ]
    if sweep.mode == "evaluate":
        lines.append(f"evaluates checkpoint {sweep.checkpoint} (no training)")
    ranges = {k: f"{d.kind}{d.values}" for k, d in sweep.domains.items() if d.kind != "grid"}
    for i, point in enumerate(sweep.grid_points()):
        lines.append(f"  grid point {i}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
    how = "proposed by TPE" if sweep.search.algorithm == "optuna" else "drawn per sample"
    for k, r in ranges.items():
        lines.append(f"  {how}: {k} ~ {r}")
    return "\n".join(lines)

"""What each Tune experiment-state save uploads at N trials: Tune's default per-trial logger files,
one result.json per trial (the pipeline until 2026-12-06), and no trial file at all (the
pipeline now: `pipeline.sweeping.results_file.ResultsFile` writes result.json straight to
storage and leaves the staging directory with the experiment's own files).

Tune saves the experiment state every so often during a sweep and once more at its end, and
each save uploads the driver's whole experiment directory to the sweep's storage, every
trial's files included, whether they changed or not. This runs N trivial trials (each reports
R results, as a tiny TRM trial does) through a real Tune experiment on a local Ray with Tune's
default loggers, then times Tune's own uploader (`ray.train._internal.storage
._upload_to_fs_path`, what each save runs) sending that directory to an S3 server (moto on
loopback): as the defaults leave it, with result.json only, and with no trial files. The
uploads alternate, `--repeats` times each; reported: files and seconds per save, and their
ratios to the defaults (all from this run).

    python benchmarks/experiment_save.py              # 1,000 trials
    python benchmarks/experiment_save.py --quick      # 100 trials
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import machine, pick_device, save, table
from services import moto_process

BUCKET = "trm-save"
KEPT = {"defaults": None, "result_json": {"result.json"}, "no_trial_files": set()}
"""Files each label keeps in a trial directory (None: all; empty: the directory goes too)."""
COLUMNS = [("files", "trial files"), ("count", "files per save"),
           ("s", "s per save (median)"), ("ratio", "vs defaults")]  # fmt: skip


def run_trials(n: int, results: int, root: Path) -> Path:
    """A real Tune experiment of `n` trials under `root` with Tune's default loggers; its
    directory."""
    import ray
    from ray import tune

    def trial(config: dict[str, Any]) -> None:
        for i in range(results):
            metrics = {f"train/m{k}": (i + 1) * config["x"] * 1e-3 + k for k in range(12)}
            tune.report({"step": i + 1, "eval/accuracy": 0.1 * i, **metrics})

    os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)  # Tune's defaults
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tune.Tuner(
            tune.with_resources(trial, {"cpu": 0.25}),
            param_space={"x": tune.grid_search(list(range(n)))},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name="exp", storage_path=str(root), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    return root / "exp"


def kept_copy(exp: Path, dest: Path, kept: set[str]) -> Path:
    """`exp` with only the `kept` files in each trial directory (none: no trial directory)."""

    def ignore(d: str, names: list[str]) -> list[str]:
        if not kept:
            return [n for n in names if n.startswith("trial_")]
        return [n for n in names if Path(d).name.startswith("trial_") and n not in kept]

    shutil.copytree(exp, dest, ignore=ignore)
    return dest


def files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file())


def time_saves(dirs: dict[str, Path], fs: Any, repeats: int) -> dict[str, list[float]]:
    """Seconds of each upload of each directory, alternating between them."""
    from ray.train._internal.storage import _upload_to_fs_path

    times: dict[str, list[float]] = {k: [] for k in dirs}
    for i in range(repeats):
        for label, d in dirs.items():
            t = time.perf_counter()
            _upload_to_fs_path(str(d), fs, f"{BUCKET}/{label}/{i}")
            times[label].append(time.perf_counter() - t)
    return times


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 trials")
    ap.add_argument("--results", type=int, default=3, help="results each trial reports")
    ap.add_argument("--repeats", type=int, default=3, help="uploads of each directory")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.trials = 100
    if a.trials < 1 or a.results < 1 or a.repeats < 1:
        ap.error("--trials, --results and --repeats must be >= 1")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import boto3
    from pyarrow import fs as pafs

    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="trm-save-", dir="/tmp"))
    try:
        with moto_process(work / "moto.log") as url:
            aws = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
            os.environ.update(aws)
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            exp = run_trials(a.trials, a.results, work / "runs")
            dirs = {k: exp if kept is None else kept_copy(exp, work / k, kept)
                    for k, kept in KEPT.items()}  # fmt: skip
            s3 = pafs.S3FileSystem(endpoint_override=url, scheme="http", region="us-east-1",
                                   access_key="testing", secret_key="testing")  # fmt: skip
            times = time_saves(dirs, s3, a.repeats)
            trial_files = {k: sorted({p.name.split(".out.")[0] for p in d.glob("trial_*/*")})
                           for k, d in dirs.items()}  # fmt: skip
            counts = {k: files(d) for k, d in dirs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "trials": a.trials, "results_per_trial": a.results, "repeats": a.repeats,
        "files_per_save": counts, "trial_files": trial_files,
        "seconds_per_save": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_vs_defaults": {k: round(v / med["defaults"], 3) for k, v in med.items()},
        "machine": machine(pick_device(None), "wall"), "args": vars(a),
    }  # fmt: skip
    rows = [{"files": ", ".join(trial_files[k]), "count": counts[k], "s": f"{med[k]:.2f}",
             "ratio": f"{med[k] / med['defaults']:.2f}"} for k in dirs]  # fmt: skip
    print(table(rows, COLUMNS), flush=True)
    save(result, "experiment_save", pick_device(None), a.quick, a.out)
    return result


if __name__ == "__main__":
    main()

"""Sweep TRM run configs with Ray Tune, tracked in MLflow: one parent run per sweep, one child
run per trial, and at the end a summary (table, best config, plots) on the console and on the
parent run. The code is the package `pipeline.sweeping`; this file is the script.

    python pipeline/sweep.py                                   # the CPU default: depth on 4x4 Sudoku
    python pipeline/sweep.py --sweep sweeps/smoke.yaml         # any sweep file (sweeps/*.yaml)
    python pipeline/sweep.py --sweep sweeps/smoke.yaml --resume          # continue after a crash
    python pipeline/sweep.py --sweep sweeps/smoke.yaml --resume auto     # continue, or start if new
    python pipeline/sweep.py --sweep sweeps/act_study.yaml --dry-run     # check and list trials
    python pipeline/sweep.py --sweep S --set data.uri=s3://b/sudoku --storage-path s3://b/sweeps
    ray job submit --address http://HEAD:8265 --working-dir . -- python pipeline/sweep.py --sweep S
    trm-sweep --sweep sweeps/smoke.yaml                        # the same, as a console script

`import pipeline` finds the installed (`pip install -e .`) package; under `ray job submit` Ray
puts the job's working directory first on PYTHONPATH. What Tune pickles (the trial function,
the monitor) lives in `pipeline.sweeping`, never in this `__main__`.
"""

import sys

from pipeline.sweeping.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""The tiny run config the training, sweep and drill tests share: `tiny_run(...)` is a valid
`RunConfig` whose steps take milliseconds on one core; a test changes what it relies on with
`--set`-style overrides (`"model.H_cycles=2"`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A TRM small enough that a step takes milliseconds on one core; 4x4 Sudoku has a puzzle
# table of one row, so the sparse optimiser still runs.
TINY_RUN: dict[str, Any] = {
    "name": "drill",
    "model": {
        "hidden_size": 16, "num_heads": 2, "expansion": 1.0, "L_layers": 1, "H_cycles": 1,
        "L_cycles": 1, "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "halt_max_steps": 2,
        "halt_exploration_prob": 0.3,
    },
    "optim": {"lr": 3e-3, "lr_warmup_steps": 2, "lr_min_ratio": 0.5, "puzzle_emb_lr": 1e-2,
              "ema_rate": 0.9},
    "data": {"global_batch_size": 16},
    "schedule": {"steps": 12, "log_every": 1},
    "eval": {"every": 4, "max_examples": 16, "depth_steps": 3, "num_pictures": 0},
    "checkpoint": {"every": 4, "num_to_keep": 0, "max_failures": 2},
    "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "peak_flops": 1.0e9},
    "tracking": {"enabled": False, "experiment": "trm-drill"},
}  # fmt: skip


def tiny_run(data_uri: str, storage: str | Path, *overrides: str, tracking_uri: str = ""):
    """`RunConfig` of TINY_RUN on `data_uri`, checkpoints under `storage`; `tracking_uri` turns
    MLflow on; `overrides` as in `--set`."""
    from pipeline.config.run import RunConfig

    d = json.loads(json.dumps(TINY_RUN))
    d["data"]["uri"] = data_uri
    d["checkpoint"]["storage_path"] = str(storage)
    if tracking_uri:
        d["tracking"].update(enabled=True, uri=tracking_uri)
    return RunConfig.from_dict(d).with_overrides(list(overrides))

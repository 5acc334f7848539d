"""`schedule.epochs`: converted to steps with the dataset's real rows per epoch (one variant of
every puzzle group), as the official trainer converts its epochs, and the run trains them."""

from __future__ import annotations

import pytest
from test_train import TINY

from pipeline.config.run import RunConfig
from pipeline.training.schedule import rows_per_epoch, with_epoch_steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    from pipeline.data import build_sudoku

    root = tmp_path_factory.mktemp("epochs")
    fly, mat = str(root / "fly"), str(root / "mat")
    build_sudoku(fly, size=4, num_train=96, num_test=16, seed=0, min_clues=10)
    build_sudoku(mat, size=4, num_train=96, num_test=16, seed=0, min_clues=10, num_aug=3)
    return {"fly": fly, "mat": mat, "root": str(root)}


def cfg_for(uri: str, *overrides: str) -> RunConfig:
    return RunConfig.from_dict({**TINY, "data": {**TINY["data"], "uri": uri}}).with_overrides(
        list(overrides)
    )


def test_epochs_become_steps_with_the_rows_one_epoch_reads(data):
    cfg, line = with_epoch_steps(cfg_for(data["fly"], "schedule.epochs=5"))
    assert cfg.schedule.steps == 5 * 96 // 16 == 30 and cfg.schedule.epochs == 5
    assert line == "schedule.epochs 5 = 30 steps (96 training rows per epoch, global batch 16)"
    # 96 puzzles stored with 3 copies each: an epoch still reads one variant per puzzle
    mat = cfg_for(data["mat"], "schedule.epochs=5", "data.augment=fixed_pool", "data.num_aug=3")
    assert rows_per_epoch(mat) == 96 and with_epoch_steps(mat)[0].schedule.steps == 30
    # truncated, as the official int(...); a step at least
    assert with_epoch_steps(cfg_for(data["fly"], "schedule.epochs=1",
                                    "data.global_batch_size=64"))[0].schedule.steps == 1  # fmt: skip
    plain = cfg_for(data["fly"], "schedule.steps=7")
    assert with_epoch_steps(plain) == (plain, "")


def test_a_run_by_epochs_trains_the_converted_steps(data, capsys):
    from pathlib import Path

    from pipeline.train import run_info
    from pipeline.training.worker import LocalCheckpoints, run_in_process

    root = Path(data["root"])
    cfg = cfg_for(data["fly"], "schedule.epochs=1", "eval.every=3", "checkpoint.every=6",
                  "tracking.enabled=false", f"checkpoint.storage_path={root / 'runs'}")  # fmt: skip
    report = LocalCheckpoints(root / "runs" / "ep")
    run_in_process(cfg, run_info(cfg, "ep", str(root / "runs")), report=report)
    assert report.history[-1]["step"] == 96 // 16
    assert "schedule.epochs 1 = 6 steps (96 training rows per epoch" in capsys.readouterr().out

"""`schedule.epochs`: an alternative to `schedule.steps` (never both), converted once per run to
steps with the training split's real rows per epoch (one variant of every puzzle group, all its
examples: the official loader's epoch), printed and logged; exact arithmetic on tiny datasets
whose counts are known."""

from __future__ import annotations

import json

import pytest
import yaml
from test_arc_vote import _arc_source
from tiny_run import TINY_RUN

from pipeline.config.fields import apply_overrides
from pipeline.config.run import ConfigError, RunConfig
from pipeline.config.sections import epochs_to_steps
from pipeline.training.schedule import rows_per_epoch, with_epoch_steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    from pipeline.data import build_arc, build_sudoku

    root = tmp_path_factory.mktemp("epochs")
    fly, mat = str(root / "fly"), str(root / "mat")
    build_sudoku(fly, size=4, num_train=96, num_test=16, seed=0, min_clues=10)
    build_sudoku(mat, size=4, num_train=96, num_test=16, seed=0, min_clues=10, num_aug=3)
    # ARC: 4 training tasks of 3 + 1 pairs (all 4 train), 2 evaluation tasks whose one
    # demonstration each trains: 4 x 4 + 1 + 1 = 18 rows per variant set
    src = _arc_source(root / "src", n_train_tasks=4)
    arc_fly, arc_mat = str(root / "arc_fly"), str(root / "arc_mat")
    build_arc(arc_fly, src, num_aug=7, seed=3)
    build_arc(arc_mat, src, num_aug=3, seed=3, materialise=True)
    return {"fly": fly, "mat": mat, "arc_fly": arc_fly, "arc_mat": arc_mat, "root": str(root)}


def cfg_for(uri: str, *overrides: str) -> RunConfig:
    """The tiny run (tests/tiny_run.py) on `uri` with the schedule given by `overrides` only
    (applied before validation, as `--set` is)."""
    d = {**TINY_RUN, "name": "tiny", "data": {**TINY_RUN["data"], "uri": uri},
         "schedule": {"log_every": 1}}
    return RunConfig.from_dict(apply_overrides(d, overrides))


def test_steps_and_epochs_are_alternatives():
    with pytest.raises(ConfigError, match=r"^schedule\.steps: cannot be given with schedule\."
                                          r"epochs \(5\), its alternative"):  # fmt: skip
        cfg_for("d", "schedule.steps=7", "schedule.epochs=5")
    with pytest.raises(ConfigError, match=r"^schedule\.rows_per_epoch: is written by the run"):
        cfg_for("d", "schedule.epochs=5", "schedule.rows_per_epoch=96")
    # a converted config whose steps do not follow from its epochs (5 x 96 / 16 = 30)
    with pytest.raises(ConfigError, match=r"^schedule\.steps: \(1000\) does not follow from "
                                          r"schedule\.epochs 5 x schedule\.rows_per_epoch 96 / "
                                          r"data\.global_batch_size 16 = 30"):  # fmt: skip
        cfg_for("d", "schedule.epochs=5", "schedule.rows_per_epoch=96", "schedule.steps=1000")
    # a built config has its steps: training it by epochs means unsetting them
    with pytest.raises(ConfigError, match=r"schedule\.steps=null to train by epochs"):
        cfg_for("d").with_overrides(["schedule.epochs=5"])
    assert (
        cfg_for("d").with_overrides(["schedule.epochs=5", "schedule.steps=null"]).schedule.steps
        is None
    )
    assert cfg_for("d").schedule.steps == 1000  # neither given
    assert cfg_for("d", "schedule.epochs=5").schedule.steps is None  # until converted
    # a converted config (as the run stores and logs it) reads back as it was
    done = cfg_for("d", "schedule.epochs=5", "schedule.steps=30", "schedule.rows_per_epoch=96")
    assert RunConfig.from_dict(done.to_dict()) == done


def test_an_epoch_is_one_variant_of_every_group(data, capsys):
    cfg = with_epoch_steps(cfg_for(data["fly"], "schedule.epochs=5"))
    s = cfg.schedule
    assert (s.steps, s.epochs, s.rows_per_epoch) == (5 * 96 // 16, 5, 96) == (30, 5, 96)
    assert capsys.readouterr().out == (
        "[tiny] schedule.epochs 5 = 30 steps (96 training rows per epoch: one variant of every "
        "puzzle group; global batch 16)\n"
    )
    assert with_epoch_steps(cfg) is cfg  # converted once; nothing said again
    assert capsys.readouterr().out == ""
    # 96 puzzles stored with 3 augmented copies each (384 rows): an epoch still reads 96
    mat = cfg_for(data["mat"], "schedule.epochs=5", "data.augment=fixed_pool", "data.num_aug=3")
    assert rows_per_epoch(mat) == 96 and with_epoch_steps(mat).schedule.steps == 30
    # truncated as the official int(...): 3 x 96 / 64 = 4.5 -> 4; and at least one step
    by64 = "data.global_batch_size=64"
    assert with_epoch_steps(cfg_for(data["fly"], "schedule.epochs=3", by64)).schedule.steps == 4
    assert epochs_to_steps(1, 96, 128) == 1
    plain = cfg_for(data["fly"], "schedule.steps=7")
    assert with_epoch_steps(plain) is plain


def test_arc_epochs_count_examples_of_one_variant_per_task(data):
    """Tasks of several examples: an epoch reads every example of one variant of each task,
    whatever the number of variants, which is the official total_groups x mean examples per
    stored variant when every task stores the same number of variants."""
    from pipeline.data import ShardStream

    for uri, aug in ((data["arc_fly"], 7), (data["arc_mat"], 3)):
        cfg = cfg_for(uri, "schedule.epochs=10", "data.global_batch_size=8",
                      "data.augment=fixed_pool", f"data.num_aug={aug}")  # fmt: skip
        assert rows_per_epoch(cfg) == 18
        assert with_epoch_steps(cfg).schedule.steps == 10 * 18 // 8 == 22  # 22.5 truncated
    groups = ShardStream(data["arc_mat"], "train", batch_size=1, prefetch=0).reader.groups()
    assert (groups.num_groups, groups.num_rows, int(groups.variants.sum())) == (6, 72, 24)
    official = groups.num_groups * (groups.num_rows / groups.variants.sum())  # 6 x 72 / 24
    assert official == 18


def test_a_run_by_epochs_converts_once_trains_and_logs_the_steps(data, tmp_path, capsys):
    from pipeline.tracking.tracker import find_run, read_run
    from pipeline.train import main

    db, runs = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "runs"
    cfg = cfg_for(data["fly"], "schedule.epochs=1", "eval.every=3", "checkpoint.every=6",
                  f"checkpoint.storage_path={runs}", "tracking.enabled=true", "tracking.experiment=ep",
                  f"tracking.uri={db}", "eval.num_pictures=0")  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main([str(path), "--local"]) == 0
    out = capsys.readouterr().out
    assert out.count("schedule.epochs 1 = 6 steps (96 training rows per epoch") == 1, out
    assert "[tiny] final: step=6," in out
    params = read_run(db, find_run(db, "ep", f"{runs}/tiny"))["params"]
    assert (params["schedule.steps"], params["schedule.epochs"]) == ("6", "1")
    assert params["schedule.rows_per_epoch"] == "96"
    stored = json.loads((runs / "tiny" / "run_config.json").read_text())
    assert (stored["schedule.steps"], stored["schedule.rows_per_epoch"]) == (6, 96)

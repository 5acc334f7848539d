"""The task registry (pipeline/tasks): errors on a duplicate or unknown family, the build CLI
read from a builder's signature, meta.json checked by its family, and the proof that a family
needs no pipeline file: a toy family registered here is built, streamed, trained, evaluated,
solved and swept through the public entry points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_run import tiny_run

from pipeline.tasks import Arg, Picture, TaskSpec, TextPuzzle, get_task, register_task, task_names
from pipeline.tasks.registry import unregister_task

TOY = "toy-reverse"
SIDE = 3  # a 3x3 grid of values 1..4: tokens 0 pad, 1..4


def toy_spec(drawn: list) -> TaskSpec:
    """The toy family: read a row of 9 values, answer it reversed; augmented by adding a
    per-row shift to every value (mod 4), which keeps the answer the reversed question.
    Everything is defined in here, so Ray pickles it by value into its workers."""
    from pipeline.data.builders import existing_dataset
    from pipeline.data.shards import DatasetWriter

    def build_toy(
        out_uri: str,
        num_train: int = 64,
        num_test: int = 16,
        seed: int = 0,
        *,
        rows_per_shard: int = 1000,
        row_group_rows: int = 32,
        overwrite: bool = False,
        progress=None,
    ):
        params = {"num_train": num_train, "num_test": num_test}
        generator, meta = existing_dataset(out_uri, TOY, seed, params, overwrite)
        if meta is not None:
            return meta
        rng = np.random.default_rng(seed)
        w = DatasetWriter(out_uri, seq_len=SIDE * SIDE, rows_per_shard=rows_per_shard,
                          row_group_rows=row_group_rows, overwrite=overwrite)  # fmt: skip
        for split, n in (("train", num_train), ("test", num_test)):
            x = rng.integers(1, 5, (n, SIDE * SIDE)).astype(np.uint8)
            w.add(split, inputs=x, labels=x[:, ::-1].copy(),
                  puzzle_identifier=np.zeros(n, np.int32), group=np.arange(n))  # fmt: skip
        return w.commit(task=TOY, seq_len=SIDE * SIDE, vocab_size=5, pad_id=0,
                        ignore_label_id=0, blank_identifier_id=0, num_puzzle_identifiers=1,
                        encoding={"values": 4}, augmentation={"mode": "on_the_fly"},
                        generator=generator)  # fmt: skip

    def augment(x, y, pid, keys, meta, split, k=None):
        shift = (keys % 4).astype(np.int64)[:, None]
        def move(t):
            return np.where(t > 0, (t.astype(np.int64) - 1 + shift) % 4 + 1, 0).astype(t.dtype)
        return move(x), move(y), pid

    def check_meta(meta):
        from pipeline.data.errors import DatasetError

        if meta.encoding.get("values") != 4:
            raise DatasetError(f"encoding.values must be 4, got {meta.encoding.get('values')!r}")

    def parse(text, n):
        if set(text) - set("1234"):
            raise ValueError(f"values are 1..4, got {text!r}")
        return np.array([int(c) for c in text], np.int64)

    return TaskSpec(
        name=TOY,
        summary="rows of 9 values to reverse",
        builder=build_toy,
        arguments={"num_train": Arg("training rows"), "num_test": Arg("test rows")},
        augment=augment,
        check_meta=check_meta,
        picture=Picture(lambda ax, puzzle, grid: drawn.append(grid.shape), legend="toy marks"),
        text=TextPuzzle(
            parse=parse,
            cells=lambda tokens: [str(t) if 1 <= t <= 4 else "?" for t in tokens],
            fits=lambda seq_len, vocab: seq_len == SIDE * SIDE and vocab == 5,
            verdict=lambda q, a: "reversed" if (a == q[::-1]).all() else "NOT reversed",
        ),
    )


@pytest.fixture
def toy():
    """The toy family, registered for one test (and removed after it); yields the list its
    picture hook appends to."""
    drawn: list = []
    register_task(toy_spec(drawn))
    try:
        yield drawn
    finally:
        unregister_task(TOY)


def test_a_duplicate_or_unknown_family_is_an_error_naming_the_known_ones(toy):
    assert task_names()[:3] == ["sudoku", "maze", "arc"] and TOY in task_names()
    with pytest.raises(ValueError, match=rf"task '{TOY}' is already registered \(known tasks: sudoku"):
        register_task(toy_spec([]))
    with pytest.raises(ValueError, match="unknown task 'sodoku': the known tasks are sudoku"):
        get_task("sodoku")
    with pytest.raises(ValueError, match="use letters, digits"):
        TaskSpec("a b", "", print, {}, print, print)


def test_a_builder_parameter_without_help_stops_the_build_cli(toy):
    from pipeline.build_data import main

    unregister_task(TOY)
    spec = toy_spec([])
    register_task(TaskSpec(**{**spec.__dict__, "arguments": {"num_train": Arg("rows")}}))
    with pytest.raises(ValueError, match="build_toy parameter 'num_test' has no help"):
        main([TOY, "--help"])


def test_bool_and_list_parameters_read_as_flags():
    from pipeline.build_data import _parser

    a = _parser().parse_args(["arc", "--out", "x", "--no-translate", "--subsets", "a", "b"])
    assert (a.translate, a.subsets, a.materialise, a.num_aug) == (False, ["a", "b"], False, 1000)
    a = _parser().parse_args(["maze", "--out", "x", "--wall-density", "0.1", "0.2"])
    assert a.wall_density == [0.1, 0.2] and a.workers >= 1 and not a.materialise


def test_meta_json_is_checked_by_its_family(tmp_path):
    from pipeline.data import DatasetError, ShardStream, build_sudoku

    uri = tmp_path / "s"
    build_sudoku(str(uri), size=4, num_train=8, num_test=4, seed=0)
    meta = json.loads((uri / "meta.json").read_text())
    (uri / "meta.json").write_text(json.dumps({**meta, "task": "nonesuch"}))
    with pytest.raises(DatasetError, match="unknown task 'nonesuch': the known tasks are sudoku"):
        ShardStream(str(uri), "train", batch_size=4)
    bad = {**meta, "encoding": {**meta["encoding"], "size": 5}}
    (uri / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"encoding\.size = 5 does not fit seq_len 16"):
        ShardStream(str(uri), "train", batch_size=4)


# the shared tiny run (tests/tiny_run.py) for the toy family: no puzzle embedding, pictures
# (they ask the family's Picture), tracked
TOY_SET = ("name=toy", "model.puzzle_emb_ndim=0", "schedule.steps=8", "schedule.log_every=4",
           "eval.depth_steps=2", "eval.num_pictures=2", "tracking.enabled=true",
           "tracking.experiment=trm-toy")  # fmt: skip


def test_a_family_registered_in_a_test_builds_streams_trains_evaluates_and_solves(
    toy, tmp_path, capsys
):
    from pipeline import build_data, evaluate, train
    from pipeline.data import ShardStream

    uri = str(tmp_path / "toy")
    assert build_data.main([TOY, "--out", uri, "--num-train", "64", "--quiet"]) == 0
    assert "toy-reverse dataset" in capsys.readouterr().out

    plain = next(iter(ShardStream(uri, "train", batch_size=16, seed=0, augment=False)))
    moved = next(iter(ShardStream(uri, "train", batch_size=16, seed=0, augment="on_the_fly")))
    for b in (plain, moved):  # the family's augmentation keeps its answers right
        assert (b["labels"] == b["inputs"][:, ::-1]).all()
    assert (plain["inputs"] != moved["inputs"]).any()

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(tiny_run(uri, tmp_path / "runs", *TOY_SET).to_dict()))
    sets = ["--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert train.main([str(config), "--local", *sets]) == 0
    assert toy, "the evaluation's pictures did not ask the family's Picture"
    capsys.readouterr()

    run_dir = str(tmp_path / "runs" / "toy")
    assert evaluate.main([run_dir, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["step"] == 8 and got["eval/count"] == 16 and 0 <= got["eval/accuracy"] <= 1

    assert evaluate.main([run_dir, "--puzzle", "123412341"]) == 0
    out = capsys.readouterr().out
    assert f"; {TOY};" in out and "1 2 3" not in out and "123" in out  # no separator
    assert "the answer is reversed" in out or "the answer is NOT reversed" in out


@pytest.mark.slow
def test_a_family_registered_in_a_test_is_swept(toy, ray_local, tmp_path):
    """A real one-trial sweep on local Ray: the sweep builds the toy dataset with the
    family's builder on first use and the trial (another process) trains on it."""
    from pipeline.sweeping.cli import parse_args
    from pipeline.sweeping.run import run_sweep
    from pipeline.sweeping.store import load_sweep

    base = tiny_run(str(tmp_path / "toy"), tmp_path / "runs", *TOY_SET).to_dict()
    del base["checkpoint"]["metric"]  # a sweep's trials keep checkpoints by the sweep's metric
    sweep = {
        "name": "toy-sweep",
        "base": {k: v for k, v in base.items() if k != "name"},
        "dataset": {"builder": TOY, "num_train": 64, "num_test": 16},
        "space": {"optim.lr": {"grid": [3e-3]}},
        "search": {"algorithm": "grid", "metric": "eval/accuracy", "mode": "max"},
        "concurrency": 1,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    a = parse_args(["--sweep", str(path), "--storage-path", str(tmp_path / "runs"),
                    "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    loaded, text, exp_path = load_sweep(a.sweep, a.overrides, a.storage_path, a.name)
    out = run_sweep(loaded, text, exp_path, resume=False)
    assert Path(tmp_path / "toy" / "meta.json").exists()
    (row,) = out.rows
    assert out.exit_code == 0 and row.stop_reason == "completed" and row.step == 8, row
    assert row.best is not None and 0 <= row.best <= 1

"""pipeline/evaluate.py, the evaluation command: on a checkpoint it gives the numbers training
logged at that step, logs them as a new MLflow run, solves one puzzle step by step, and turns
bad input into one line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import sudoku4, tiny_cfg  # noqa: F401 (sudoku4 is a fixture)

from pipeline.evaluate import CHECKPOINT_TAG, SOURCE_RUN_TAG, main
from pipeline.tracking.tracker import find_run, read_run
from pipeline.train import run_info
from pipeline.training.worker import run_in_process

ROOT = Path(__file__).resolve().parent.parent
PUZZLE = "1..43..2.1.34.2."  # 4x4 with one solution: blanks '.', digits 1..4


@pytest.fixture(scope="module")
def trained(sudoku4, tmp_path_factory):  # noqa: F811
    """A tiny tracked run of 8 steps, evaluated and checkpointed at 4 and 8."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(sudoku4, tmp, "schedule.steps=8", "eval.max_examples=0")
    storage = str(tmp / "runs")
    run_in_process(cfg, run_info(cfg, "tiny", storage))
    run_id = find_run(cfg.tracking.uri, "trm-test", f"{storage}/tiny")
    return {"run_dir": tmp / "runs" / "tiny", "cfg": cfg, "run_id": run_id, "tmp": tmp}


def command(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """The real command in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "pipeline" / "evaluate.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_json_gives_the_numbers_training_logged_at_that_step(trained):
    uri = trained["cfg"].tracking.uri
    logged = read_run(uri, trained["run_id"])["metrics"]
    p = command(str(trained["run_dir"]), "--json", cwd=trained["tmp"])
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["step"] == 8 and got["checkpoint"].endswith("checkpoint_00000008")
    keys = [k for k in logged if k.startswith("eval/") and k != "eval/seconds"]
    assert "eval/halt_tau_0.3/exact_accuracy" in keys and "eval/exact_accuracy_at_5" in keys
    for k in keys:
        step, value = logged[k][-1]
        assert step == 8 and got[k] == value, k
    assert got["eval/count"] == 64  # the whole test split
    depth = [k for k in logged if k.startswith("depth_curve/exact_accuracy_at_step_")]
    assert len(depth) == 5 and all(got[k] == logged[k][-1][1] for k in depth)


def test_a_test_time_setting_gives_what_the_evaluate_mode_sweep_measures(trained):
    """`--set eval.trajectories=...` (the lines an evaluate-mode sweep prints for its best
    setting) evaluates with TRM.predict exactly as the sweep's trial does, seeded noise included."""
    import contextlib

    import torch

    from pipeline.checkpoints.restore import restore
    from pipeline.evaluation.trajectories import evaluate_test_time

    sets = ["eval.trajectories=3", "eval.noise_std=0.2", "eval.max_steps=4", "eval.seed=7"]
    p = command(str(trained["run_dir"]), "--json", *[a for s in sets for a in ("--set", s)],
                cwd=trained["tmp"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    with contextlib.ExitStack() as stack:
        r = restore(str(trained["run_dir"]), stack, say=lambda _: None)
        want = evaluate_test_time(r.model, r.config.with_overrides(sets), torch.device("cpu"))
    assert want["eval/count"] == 64 and want["eval/inference_flops_per_example"] > 0
    assert {k: got[k] for k in want} == want
    assert "eval/halt_tau_0.5/steps" not in got  # not the training run's fixed-step evaluation


def test_fixed_depth_with_one_trajectory_is_the_training_evaluation(trained):
    """Protocol fixed_depth, K=1, no noise, D = halt_max_steps: exactly the answer the training
    run's evaluation scores (every example runs halt_max_steps steps)."""
    logged = read_run(trained["cfg"].tracking.uri, trained["run_id"])["metrics"]
    p = command(str(trained["run_dir"]), "--json", "--set", "eval.protocol=fixed_depth",
                cwd=trained["tmp"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    step, want = logged["eval/exact_accuracy"][-1]
    assert step == 8 and got["eval/exact_accuracy"] == want and got["eval/count"] == 64
    # the same answers token for token (exact accuracy is 0 this early in training)
    assert got["eval/accuracy"] == logged["eval/accuracy"][-1][1] > 0.3
    assert got["eval/steps"] == trained["cfg"].model.halt_max_steps
    for k in ("best_q", "mode", "pass_at_k"):  # one trajectory: every rule takes it
        assert got[f"eval/fixed_depth/{k}_exact_accuracy"] == want, k


def test_fixed_depth_metrics_come_from_one_set_of_trajectories(trained):
    """best-Q@K, mode@K and pass@K of `evaluate_test_time`, recomputed by hand from the same K
    noisy trajectories (one call over the whole split, as the evaluation makes with this
    batch size); every trajectory runs exactly D steps."""
    import contextlib

    import numpy as np
    import torch

    from pipeline.checkpoints.restore import restore
    from pipeline.data.stream import ShardStream
    from pipeline.evaluation.trajectories import evaluate_test_time
    from trm import inference_flops

    K, D = 4, 5
    sets = ["eval.protocol=fixed_depth", f"eval.trajectories={K}", "eval.noise_std=0.5",
            f"eval.depth={D}", "eval.seed=3", "eval.select=vote"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        r = restore(str(trained["run_dir"]), stack, say=lambda _: None)
        cfg = r.config.with_overrides([*sets, f"data.eval_batch_size={64 * K}"])
        got = evaluate_test_time(r.model, cfg, torch.device("cpu"))
        b = next(iter(ShardStream(cfg.data.uri, "test", batch_size=64, rank=0, world_size=1,
                                  seed=0, shuffle=False, augment=False, epoch=0,
                                  drop_last=False)))  # fmt: skip
        x, y, pid = (torch.as_tensor(np.asarray(b[k])).long()
                     for k in ("inputs", "labels", "puzzle_identifiers"))  # fmt: skip
        runs = r.model.run_trajectories(x, pid, False, D, trajectories=K, noise_std=0.5,
                                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    exact_BK = ((runs.preds == y.repeat_interleave(K, 0)) | (y.repeat_interleave(K, 0) == -100)
                ).all(-1).view(-1, K)  # fmt: skip
    q_BK, preds_BKL = runs.q_halt_logits.view(-1, K), runs.preds.view(64, K, -1)
    best_q = exact_BK.gather(1, q_BK.argmax(1, keepdim=True)).float().mean().item()
    mode = []
    for i in range(64):
        answers = [tuple(p.tolist()) for p in preds_BKL[i]]
        top = max(answers.count(a) for a in answers)
        k = max((k for k in range(K) if answers.count(answers[k]) == top), key=lambda k: q_BK[i, k])
        mode.append(bool(exact_BK[i, k]))
    assert got["eval/fixed_depth/best_q_exact_accuracy"] == pytest.approx(best_q, abs=1e-12)
    assert got["eval/fixed_depth/mode_exact_accuracy"] == pytest.approx(np.mean(mode), abs=1e-12)
    assert got["eval/exact_accuracy"] == got["eval/fixed_depth/mode_exact_accuracy"]  # vote
    pass_at_k = got["eval/fixed_depth/pass_at_k_exact_accuracy"]
    assert pass_at_k == pytest.approx(exact_BK.any(1).float().mean().item(), abs=1e-12)
    assert pass_at_k >= max(best_q, np.mean(mode))
    assert got["eval/steps"] == D  # a fixed depth: no trajectory halts early
    assert got["eval/inference_flops_per_example"] == inference_flops(r.model.config, D, K)


def test_mlflow_logs_a_new_run_tagged_with_its_source(trained, tmp_path):
    ckpt4 = trained["run_dir"] / "checkpoint_00000004"
    db = f"sqlite:///{tmp_path / 'eval.db'}"
    p = command(str(ckpt4), "--mlflow", "--set", "eval.halt_thresholds=[0.5]", cwd=tmp_path,
                env={"MLFLOW_TRACKING_URI": db})  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert f"checkpoint {ckpt4} (step 4)" in p.stdout
    assert "halting-threshold curve" in p.stdout and "depth curve" in p.stdout
    training = read_run(trained["cfg"].tracking.uri, trained["run_id"])["metrics"]
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(db).search_runs(
        [MlflowClient(db).get_experiment_by_name("trm-test").experiment_id]
    )
    assert run.data.tags[SOURCE_RUN_TAG] == trained["run_id"]
    assert run.data.tags[CHECKPOINT_TAG] == str(ckpt4)
    assert run.data.metrics["eval/accuracy"] == dict(training["eval/accuracy"])[4]
    assert "eval/halt_tau_0.5/steps" in run.data.metrics
    assert "eval/halt_tau_0.3/steps" not in run.data.metrics  # --set took effect


def test_puzzle_prints_every_step_and_the_halting_one(trained):
    p = command(str(trained["run_dir"]), "--puzzle", PUZZLE, "--max-steps", "4",
                cwd=trained["tmp"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "puzzle:\n1 . . 4\n3 . . 2\n. 1 . 3\n4 . 2 ." in out
    assert [f"step {k} (" in out for k in range(1, 6)] == [True] * 4 + [False]
    assert out.count("<- halts here") == 1 or "did not halt" in out
    assert "the answer is " in out and "Sudoku" in out.splitlines()[-1]


def test_damaged_newest_checkpoint_falls_back_to_the_previous(trained, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(trained["run_dir"], run)
    trainer = run / "checkpoint_00000008" / "trainer.pt"
    trainer.write_bytes(trainer.read_bytes()[:100])
    p = command(str(run), "--puzzle", PUZZLE, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "skipping checkpoint" in p.stdout and "checkpoint_00000008" in p.stdout
    assert f"checkpoint {run / 'checkpoint_00000004'} (step 4)" in p.stdout


@pytest.fixture(scope="module")
def sudoku6(tmp_path_factory) -> str:
    from pipeline.data import build_sudoku

    uri = str(tmp_path_factory.mktemp("data") / "sudoku6")
    build_sudoku(uri, size=6, num_train=8, num_test=8, seed=0, min_clues=20)
    return uri


@pytest.mark.parametrize(
    "args, says",
    [
        (["{tmp}/nowhere"], "no such file or directory"),
        (["{tmp}/empty"], "neither a checkpoint directory"),
        (["{run}", "--data", "{sudoku6}"], "seq_len 16, vocab_size 6"),
        (["{run}", "--data", "{sudoku6}", "--puzzle", PUZZLE], "seq_len 16, vocab_size 6"),
        (["{run}", "--puzzle", "1.3"], "has 16 characters, got 3"),
        (["{run}", "--puzzle", "1.3......2....5."], "'5' at position 14"),
        (["{run}", "--set", "eval.nope=1"], "eval.nope"),
        (["{run}", "--set", "optim.lr=1"], "only eval.* keys"),
        (["{run}", "--set", "eval.depth=4"], "eval.depth: is the depth of protocol fixed_depth"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, sudoku6, tmp_path, capsys, args, says):
    (tmp_path / "empty").mkdir()
    fill = {"tmp": tmp_path, "run": trained["run_dir"], "sudoku6": sudoku6}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says in err, err
    if "--data" in args:
        assert sudoku6 in err and "seq_len 36, vocab_size 8" in err  # names both


def test_puzzle_text_as_the_datasets_encode_it():
    from pipeline.config.run import ConfigError
    from pipeline.evaluation.solve import _grid, encode_puzzle
    from pipeline.tasks.sudoku import sudoku_verdict
    from trm.puzzles import maze, sudoku

    assert (
        encode_puzzle("sudoku", PUZZLE, 16).tolist()
        == sudoku.encode(sudoku.parse_board(PUZZLE, 4)).tolist()
    )
    assert encode_puzzle("sudoku", PUZZLE.replace(".", "0"), 16).tolist()[:4] == [2, 1, 1, 5]
    text = "S # " + "  # " + "#   " + "  #G"
    tokens = encode_puzzle("maze", text, 16)
    assert tokens.tolist() == maze.encode(text).tolist()
    assert "".join(_grid("maze", tokens)) == text
    with pytest.raises(ConfigError, match="'x' at position 1"):
        encode_puzzle("maze", "Sx" + text[2:], 16)
    with pytest.raises(ConfigError, match="this model is for arc"):
        encode_puzzle("arc", text, 16)

    question = sudoku.encode(sudoku.parse_board(PUZZLE, 4))
    (solution,) = sudoku.solve(sudoku.parse_board(PUZZLE, 4).tolist(), 4).solutions
    answer = sudoku.encode(solution)
    assert sudoku_verdict(question, answer).startswith("a valid Sudoku")
    swapped = answer.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # two blanks of row 1: the row stays a permutation
    assert "repeats a digit" in sudoku_verdict(question, swapped)
    relabelled = sudoku.encode([{1: 2, 2: 1}.get(d, d) for d in solution])  # valid, clues lost
    assert "clues changed" in sudoku_verdict(question, relabelled)

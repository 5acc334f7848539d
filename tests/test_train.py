"""The training loop in one process (the path 1-worker sweep trials use): exact resume from a
mid-ACT checkpoint, the MLflow record in the embedded store, checksummed checkpoints, and the
clear errors raised before any worker starts. Ray runs are in test_train_ray.py."""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import pytest
from tiny_run import tiny_run

from pipeline.checkpoints import store as ckpt
from pipeline.checkpoints.directory import CheckpointStore
from pipeline.config.run import ConfigError, RunConfig
from pipeline.data import read_meta
from pipeline.tracking.tracker import find_run, read_run
from pipeline.train import main, run_info
from pipeline.training.metrics import datasheet_peak_flops
from pipeline.training.preflight import preflight
from pipeline.training.worker import LocalCheckpoints, run_in_process
from trm import flops

# the shared tiny run (tests/tiny_run.py), with what these tests rely on: two H cycles, three
# ACT steps, a report per step, depth curves and pictures, the default resources (peak FLOPs
# probed on this CPU) and retries
TINY_SET = (
    "name=tiny", "model.H_cycles=2", "model.halt_max_steps=3", "optim.lr_warmup_steps=3",
    "optim.lr_min_ratio=0.2", "schedule.report_every=1", "eval.max_examples=32",
    "eval.depth_steps=5", "eval.num_pictures=2", "checkpoint.max_failures=3",
    "resources.cpus_per_worker=1", "resources.peak_flops=0", "tracking.experiment=trm-test",
)  # fmt: skip


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory) -> str:
    from pipeline.data import build_sudoku

    uri = str(tmp_path_factory.mktemp("data") / "sudoku4")
    build_sudoku(uri, size=4, num_train=512, num_test=64, seed=0, min_clues=10)
    return uri


def tiny_cfg(data_uri: str, tmp: Path, *overrides: str) -> RunConfig:
    return tiny_run(data_uri, tmp / "runs", *TINY_SET, *overrides,
                    tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")  # fmt: skip


def test_resume_mid_act_is_exact_and_mlflow_holds_the_run(sudoku4, tmp_path):
    cfg = tiny_cfg(sudoku4, tmp_path)
    storage = str(tmp_path / "runs")

    full = LocalCheckpoints(tmp_path / "runs" / "full")
    run_in_process(cfg, run_info(cfg, "full", storage), report=full)
    steps = [m["step"] for m in full.history]
    assert steps == list(range(1, 13))
    assert full.history[-1]["train/loss"] < full.history[0]["train/loss"]

    # the step-4 checkpoint holds examples mid-way through their ACT steps
    at4 = tmp_path / "runs" / "full" / "checkpoint_00000004"
    carry = ckpt.load(at4, ckpt.rank_file(0))["carry"]
    assert (carry["steps"] > 0).any() and (~carry["halted"]).any()

    resumed = LocalCheckpoints(tmp_path / "runs" / "resumed")
    run_in_process(cfg, run_info(cfg, "resumed", storage), report=resumed, resume_dir=str(at4))
    assert [m["step"] for m in resumed.history] == list(range(5, 13))
    for a, b in zip(full.history[4:], resumed.history):
        for key in ("train/loss", "train/exact_accuracy", "train/steps", "eval/exact_accuracy",
                    "eval/accuracy", "train/lr"):  # fmt: skip
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-9), (a["step"], key)
    # model, optimiser and RNG state after resuming equal the uninterrupted run's
    sd_full = ckpt.load(tmp_path / "runs/full/checkpoint_00000012", ckpt.TRAINER_FILE)
    sd_res = ckpt.load(tmp_path / "runs/resumed/checkpoint_00000012", ckpt.TRAINER_FILE)
    for k, v in sd_full["model"].items():
        assert (v == sd_res["model"][k]).all(), k
    for k, v in sd_full["ema"]["shadow"].items():
        assert (v == sd_res["ema"]["shadow"][k]).all(), k
    rng_full = ckpt.load(tmp_path / "runs/full/checkpoint_00000012", ckpt.rank_file(0))["rng"]
    rng_res = ckpt.load(tmp_path / "runs/resumed/checkpoint_00000012", ckpt.rank_file(0))["rng"]
    assert (rng_full["torch"] == rng_res["torch"]).all()  # same exploration draws from here on
    assert sd_full["model"]["puzzle_emb.weight"].abs().sum() > 0  # SignSGD trained the table

    # the MLflow record (embedded sqlite store)
    uri = cfg.tracking.uri
    run = read_run(uri, find_run(uri, "trm-test", f"{storage}/full"))
    assert run["status"] == "FINISHED"
    p = run["params"]
    assert p["model.hidden_size"] == "16" and p["model.seq_len"] == "16"  # from the dataset
    assert p["optim.lr"] == "0.003" and p["data.global_batch_size"] == "16"
    assert p["data.augment"] == "on_the_fly" and p["data.num_aug"] == "1000"  # the regime
    assert int(p["num_params"]) > 0 and p["dataset.task"] == "sudoku"
    m = run["metrics"]
    assert [s for s, _ in m["train/loss"]] == list(range(1, 13))
    for key in ("train/lr", "train/examples_per_s", "train/data_wait_fraction", "train/mfu",
                "train/exact_accuracy", "eval/q_halt_accuracy", "eval/steps", "eval/accuracy",
                "eval/exact_accuracy_at_halt", "eval/flops_per_example", "eval/seconds"):  # fmt: skip
        assert key in m, key
    for tau in ("0.1", "0.3", "0.5", "0.7", "0.9"):  # eval.halt_thresholds (default)
        for what in ("steps", "exact_accuracy"):
            assert [s for s, _ in m[f"eval/halt_tau_{tau}/{what}"]] == [4, 8, 12], (tau, what)
    assert m["eval/halt_tau_0.5/steps"] == m["eval/steps"]
    # depth_steps 5 > halt_max_steps 3: every example ran 5 inference steps
    step_flops = flops(cfg.resolve(read_meta(sudoku4)))["inference_step"]
    assert m["eval/flops_per_example"][-1][1] == pytest.approx(5 * step_flops)
    assert [s for s, _ in m["eval/exact_accuracy"]] == [4, 8, 12]
    # one metric per ACT depth, over training steps (the evaluation steps)
    depths = sorted(k for k in m if k.startswith("depth_curve/exact_accuracy_at_step_"))
    assert depths == [f"depth_curve/exact_accuracy_at_step_{k}" for k in range(1, 6)]
    assert all([s for s, _ in m[k]] == [4, 8, 12] for k in depths)
    assert all(v > 0 for _, v in m["train/examples_per_s"])
    # a peak probed on this CPU (best of several square matmuls): a tiny model uses a sliver of it
    assert p["resources.peak_flops_source"] == "probe: best square matmul"
    assert float(p["resources.peak_flops_used"]) > 1e8
    assert all(0 < v < 1 for _, v in m["train/mfu"])
    arts = run["artifacts"]
    for step in (4, 8, 12):
        for path in (f"depth_curve/step_{step:08d}.png", f"depth_curve/step_{step:08d}.json",
                     f"refinement/step_{step:08d}.png", f"halt_curve/step_{step:08d}.png",
                     f"halt_curve/step_{step:08d}.json"):  # fmt: skip
            assert path in arts, (path, arts)
    t = run["tags"]
    assert t["task"] == "sudoku" and t["variant"] == "attention" and t["code_version"]
    assert t["trm.run_key"] == f"{storage}/full"
    assert (tmp_path / "mlruns").is_dir()  # artifacts next to the database, not in some CWD


def test_checkpoint_files_are_checksummed(tmp_path):
    ckpt.save(tmp_path, "x.pt", {"a": 1})
    assert ckpt.load(tmp_path, "x.pt") == {"a": 1}
    data = bytearray((tmp_path / "x.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "x.pt").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.load(tmp_path, "x.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"no y\.pt"):
        ckpt.load(tmp_path, "y.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.vocab_size=12"], "model.vocab_size = 12 does not match the dataset"),
        (["model.seq_len=81"], "model.seq_len = 81 does not match the dataset"),
        (["data.uri={tmp}/missing"], "no dataset at"),
        (["checkpoint.storage_path={tmp}/a-file/runs"], "is not writable"),
        (["data.global_batch_size=4096"], "fewer than its batch"),
    ],
)
def test_errors_before_any_worker_starts(sudoku4, tmp_path, overrides, needle):
    (tmp_path / "a-file").write_text("not a directory")
    cfg = tiny_cfg(sudoku4, tmp_path, *(o.format(tmp=tmp_path) for o in overrides))
    with pytest.raises(ConfigError) as e:
        preflight(cfg, cfg.checkpoint.storage_path, cluster=False)
    assert needle in str(e.value)


def test_cli_dry_run_and_error_exit(sudoku4, tmp_path, capsys):
    import yaml

    cfg = tiny_cfg(sudoku4, tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main([str(path), "--dry-run", "--set", "schedule.steps=5"]) == 0
    out = capsys.readouterr().out
    assert "steps: 5" in out and "dataset: sudoku, seq_len 16, vocab 6" in out
    assert main([str(path), "--dry-run", "--set", "model.vocab_size=99"]) == 2
    assert "does not match the dataset" in capsys.readouterr().err
    assert main([str(path), "--set", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    # --name is taken as typed: a numeric name stays a string
    assert main([str(path), "--dry-run", "--name", "2024"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "2024"


@pytest.mark.slow
def test_tiny_model_learns_4x4_sudoku(tmp_path):
    """~1 min on 2 idle cores: the paper's recipe (deep supervision, ACT, EMA, stablemax,
    AdamATan2) takes a 130k-parameter TRM from 0 to >= 20% exact accuracy on held-out 4x4
    Sudoku (4 blanks; test puzzles from symmetry classes training never saw) in 400 steps of
    64 (measured: 34%; guessing 4 blanks: 0.4%)."""
    import torch

    from pipeline.data import build_sudoku

    uri = str(tmp_path / "sudoku4-easy")
    build_sudoku(uri, size=4, num_train=1024, num_test=128, seed=0, min_clues=12)
    cfg = tiny_cfg(
        uri, tmp_path,
        "model.hidden_size=64", "model.num_heads=4", "model.expansion=2.0", "model.L_layers=2",
        "model.H_cycles=2", "model.L_cycles=2", "model.puzzle_emb_ndim=0",
        "model.halt_max_steps=2", "model.halt_exploration_prob=0.1",
        "optim.lr=5e-3", "optim.lr_warmup_steps=40", "optim.lr_min_ratio=1.0",
        "optim.weight_decay=0.1", "optim.ema_rate=0.99", "data.global_batch_size=64",
        "schedule.steps=400", "schedule.log_every=100", "schedule.report_every=0",
        "eval.every=400", "eval.max_examples=128", "eval.depth_steps=4", "eval.num_pictures=0",
        "checkpoint.every=400", "tracking.enabled=false",
    )  # fmt: skip
    report = LocalCheckpoints(tmp_path / "runs" / "learn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as measured; small matmuls gain nothing from a second thread
    try:
        final = run_in_process(cfg, run_info(cfg, "learn", str(tmp_path / "runs")), report=report)
    finally:
        torch.set_num_threads(threads)
    assert final["step"] == 400
    assert final["eval/count"] == 128
    assert final["eval/exact_accuracy"] >= 0.20, final
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_s3_storage_and_dataset_errors_before_start(sudoku4, tmp_path, s3_env):
    ok = tiny_cfg(sudoku4, tmp_path, f"checkpoint.storage_path=s3://{s3_env.bucket}/runs")
    preflight(ok, ok.checkpoint.storage_path, cluster=False)  # a writable bucket passes
    bad = ok.with_overrides(["checkpoint.storage_path=s3://no-such-bucket-here/runs"])
    with pytest.raises(ConfigError, match="no-such-bucket-here/runs' is not writable"):
        preflight(bad, bad.checkpoint.storage_path, cluster=False)
    missing = ok.with_overrides([f"data.uri=s3://{s3_env.bucket}/no/dataset"])
    with pytest.raises(ConfigError, match="no dataset at"):
        preflight(missing, missing.checkpoint.storage_path, cluster=False)


def test_gpu_peaks_come_from_the_datasheet_for_the_dtype():
    import torch

    bf16, fp32 = torch.bfloat16, torch.float32
    assert datasheet_peak_flops("NVIDIA H200", bf16, tf32=False) == 989e12
    assert datasheet_peak_flops("NVIDIA H100 PCIe", bf16, tf32=False) == 756e12  # not the SXM's
    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3", fp32, tf32=False) == 67e12
    assert datasheet_peak_flops("NVIDIA A100-SXM4-80GB", fp32, tf32=True) == 156e12
    assert datasheet_peak_flops("NVIDIA L40S", torch.float16, tf32=False) == 362e12
    assert datasheet_peak_flops("NVIDIA L4", fp32, tf32=False) == 30.3e12
    assert datasheet_peak_flops("Tesla T4", bf16, tf32=False) == 0.0  # unknown: probed instead


def test_batch_chunk_slices_big_models_on_a_cpu_only():
    import torch

    from pipeline.training.state import batch_chunk
    from trm import TRMConfig

    paper = TRMConfig(**{"seq_len": 81, "vocab_size": 11, "num_puzzle_identifiers": 2,
                         "hidden_size": 512, "num_heads": 8, "batch_size": 64})  # fmt: skip
    tiny = TRMConfig(**{"seq_len": 16, "vocab_size": 6, "num_puzzle_identifiers": 2,
                        "hidden_size": 64, "num_heads": 2, "batch_size": 64})  # fmt: skip
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert batch_chunk(-1, paper, cpu) == 8
    assert batch_chunk(-1, paper, gpu) is None
    assert batch_chunk(-1, tiny, cpu) is None  # whole batch fits in cache: no slicing
    assert batch_chunk(0, paper, cpu) is None and batch_chunk(4, tiny, gpu) == 4
    with pytest.raises(ConfigError, match=r"resources\.batch_chunk: must be an integer >= -1"):
        RunConfig.from_dict({"data": {"uri": "d"}, "resources": {"batch_chunk": -2}})


def test_a_run_resumed_from_its_final_checkpoint_reports_its_result_again(tmp_path):
    """A run whose end was not recorded (a sweep driver killed as the trial finished) resumes
    from its final checkpoint, trains nothing and reports that checkpoint's metrics again."""
    from drills import build_tiny_sudoku, tiny_config

    data = str(tmp_path / "data")
    build_tiny_sudoku(data)
    cfg = tiny_config(data, tmp_path / "runs")
    info = run_info(cfg, "final", str(tmp_path / "runs"))
    first = LocalCheckpoints(tmp_path / "runs" / "final")
    run_in_process(cfg, info, report=first)
    with contextlib.ExitStack() as stack:  # local: the directory outlives the stack
        _, final = CheckpointStore(str(tmp_path / "runs" / "final")).newest_complete(stack)
    again: list[dict] = []
    last = run_in_process(cfg, info, report=lambda m, d: again.append(m), resume_dir=final)
    assert [m["step"] for m in again] == [cfg.schedule.steps]
    ended = first.history[-1]
    assert again[0]["eval/exact_accuracy"] == ended["eval/exact_accuracy"]
    assert last == again[0]


def test_time_based_checkpoints_between_step_checkpoints_resume_but_are_never_ranked(
    sudoku4, tmp_path
):
    """checkpoint.every_minutes: a checkpoint at each log step once that much time has passed
    (here 60 us: every log step), besides the step-based ones; its report holds no eval metrics
    (the last evaluation was at an earlier step), so pruning keeps it only as the latest; a
    run resumes from it."""
    # one evaluation, at step 12: an evaluation that improves the best is checkpointed too
    base = [
        "checkpoint.every=12",
        "eval.every=12",
        "schedule.log_every=3",
        "schedule.report_every=0",
    ]
    steps_only = LocalCheckpoints(tmp_path / "runs" / "steps")
    cfg = tiny_cfg(sudoku4, tmp_path, *base)
    run_in_process(cfg, run_info(cfg, "steps", str(tmp_path / "runs")), report=steps_only)
    assert sorted(p.name for p in (tmp_path / "runs" / "steps").iterdir()) == [
        "checkpoint_00000012"
    ]

    timed = LocalCheckpoints(tmp_path / "runs" / "timed")
    cfg = tiny_cfg(sudoku4, tmp_path, *base, "checkpoint.every_minutes=0.000001")
    run_in_process(cfg, run_info(cfg, "timed", str(tmp_path / "runs")), report=timed)
    run_dir = tmp_path / "runs" / "timed"
    saved = {int(p.name.split("_")[1]): ckpt.read_report(p) for p in run_dir.iterdir()}
    assert sorted(saved) == [3, 6, 9, 12]  # the log steps
    for step, report in saved.items():
        assert report["step"] == step and "train/loss" in report
        assert any(k.startswith("eval/") for k in report) == (step == 12), (step, report)
    at9 = tmp_path / "at9"
    shutil.copytree(run_dir / "checkpoint_00000009", at9)
    assert CheckpointStore(str(run_dir)).prune(1, "eval/exact_accuracy", "max")  # 12: latest, best
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint_00000012"]

    # resumed from the time-based checkpoint at step 9, the run ends as the uninterrupted one
    again = LocalCheckpoints(tmp_path / "runs" / "again")
    run_in_process(cfg, run_info(cfg, "again", str(tmp_path / "runs")), report=again,
                   resume_dir=str(at9))  # fmt: skip
    assert [m["step"] for m in again.history] == [12]
    for key in ("train/loss", "eval/exact_accuracy", "eval/accuracy"):
        assert math.isclose(again.history[-1][key], timed.history[-1][key], rel_tol=1e-6), key


def _decide(rank: int, port: int, flags: list[bool], out) -> None:
    import torch.distributed as dist

    from pipeline.training.distributed import main_decides

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out.put((rank, [main_decides(f) for f in flags[rank]]))
    finally:
        dist.destroy_process_group()


def test_rank_0_decides_a_wall_clock_checkpoint_for_every_rank():
    """A real 2-process gloo group: whatever rank 1's clock says, both ranks take rank 0's
    decision (a checkpoint only some ranks take would hang the others)."""
    from conftest import two_ranks

    flags = [[False, True, True], [True, False, True]]
    got = two_ranks(_decide, flags)
    assert got[0] == got[1] == flags[0]


def test_every_metric_a_run_logs_or_reports_is_one_a_config_may_rank_by(
    sudoku4, tmp_path, monkeypatch
):
    """The names a sweep's `search.metric` and `checkpoint.metric` may take come from
    `pipeline.config.metric_names`, which the logging code builds its names from: every
    train/* and eval/* name a tiny run logs or reports (and a test-time evaluation reports) is
    accepted, and every listed train/* name is logged (`train/mfu` was logged but refused)."""
    import contextlib

    import torch

    from pipeline.checkpoints.restore import restore
    from pipeline.config.metric_names import TRAIN_METRICS, check_metric, known_metric
    from pipeline.evaluation.trajectories import evaluate_test_time
    from pipeline.tracking.tracker import NullTracker
    from pipeline.train import run_info

    logged: set[str] = set()
    monkeypatch.setattr(NullTracker, "log_metrics", lambda self, m, step: logged.update(m))
    cfg = tiny_cfg(sudoku4, tmp_path, "schedule.steps=4", "eval.every=2", "checkpoint.every=2",
                   "tracking.enabled=false")  # fmt: skip
    report = LocalCheckpoints(tmp_path / "r")
    run_in_process(cfg, run_info(cfg, "names", str(tmp_path / "runs")), report=report)
    logged |= {k for m in report.history for k in m}
    with contextlib.ExitStack() as stack:
        model = restore(str(tmp_path / "r"), stack, say=lambda _: None).model
        logged |= set(evaluate_test_time(model, cfg, torch.device("cpu")))
    names = {k for k in logged if k.startswith(("train/", "eval/"))}
    assert {"train/mfu", "eval/exact_accuracy_at_5", "eval/halt_tau_0.5/steps",
            "eval/act/pass_at_k_exact_accuracy", "eval/inference_flops_per_example"} <= names  # fmt: skip
    assert sorted(k for k in names if not known_metric(k)) == []
    assert set(TRAIN_METRICS) <= names
    assert (
        check_metric("train/mfu") == "" and check_metric("eval/halt_tau_0.5/steps", "eval/") == ""
    )
    assert check_metric("train/mfu", "eval/").startswith("'train/mfu' is not a metric runs report")
    assert "'eval/nonesuch' is not a metric" in check_metric("eval/nonesuch")

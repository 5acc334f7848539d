"""Sweep files without Ray: every file in sweeps/ loads and names real config fields, bad sweep
files fail with errors naming the key, resources that can never fit are refused, and the pieces
of the summary (Pareto front, best config) are right. Ray runs are in test_sweep.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config.run import ConfigError, RunConfig
from pipeline.sweeping.cli import dry_run_text, main
from pipeline.sweeping.config import SweepConfig, iter_sweep_files
from pipeline.sweeping.plots import pareto_front
from pipeline.sweeping.report import TrialRow, best_config_yaml, best_row
from pipeline.sweeping.space import config_fields
from pipeline.training.cluster import check_fits, trial_resources, trials_that_fit

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
REQUIRED = {"smoke", "default", "sudoku_extreme_ablation", "maze_hard", "arc1", "act_study"}


def tiny(**changes) -> dict:
    d = {
        "name": "t",
        "base": {
            "model": {"hidden_size": 16, "num_heads": 2, "L_layers": 1, "H_cycles": 1,
                      "L_cycles": 1, "puzzle_emb_ndim": 0, "halt_max_steps": 2},
            "data": {"uri": "data/x", "global_batch_size": 8},
            "schedule": {"steps": 16},
            "eval": {"every": 8},
            "checkpoint": {"every": 8},
        },
        "space": {"model.H_cycles": {"grid": [1, 2]}},
    }  # fmt: skip
    for key, value in changes.items():
        node = d
        *path, last = key.split("/")
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return d


def test_every_sweep_file_loads_and_every_key_names_a_config_field():
    files = {p.stem: p for p in iter_sweep_files(SWEEPS)}
    assert REQUIRED <= set(files), sorted(files)
    fields = set(config_fields())
    for name, path in files.items():
        sweep = SweepConfig.from_yaml(path)
        assert sweep.name, name
        assert sweep.num_trials >= 2, name
        for dom in sweep.domains.values():
            for key in dom.names:
                assert key in fields, (name, key)
        # GPU training trials compile, as the official code does (evaluate-mode trials do not)
        if sweep.mode == "train" and sweep.base_config().resources.use_gpu:
            assert sweep.base_config().resources.compile != "off", name
        # every grid point (and every range bound) is a valid run config
        for point in sweep.checked_points():
            cfg = sweep.base_config(point)
            for key, value in point.items():
                section, _, leaf = key.partition(".")
                assert getattr(getattr(cfg, section), leaf) == value, (name, key)
        # the header says what the sweep asks, what it costs and where its data lives
        header = "\n".join(re.findall(r"^#.*$", path.read_text(), re.M)[:30]).lower()
        assert "cost" in header and "data" in header, name
        raw = yaml.safe_load(path.read_text())
        assert set(raw) <= set(SweepConfig.model_fields), name


def test_default_and_ablation_sweep_depth():
    default = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    keys = {n for d in default.domains.values() for n in d.names}
    assert {"model.H_cycles", "model.L_cycles", "model.L_layers"} <= keys
    assert default.base_config().resources.use_gpu is not True  # the CPU default
    seeds = {}  # two or more seeds of every grid point, grouped by the summary
    for p in default.grid_points():
        point = tuple(sorted((k, v) for k, v in p.items() if k != "data.seed"))
        seeds.setdefault(point, set()).add(p["data.seed"])
    assert len(seeds) == 4 and all(len(s) >= 2 for s in seeds.values())
    ablation = SweepConfig.from_yaml(SWEEPS / "sudoku_extreme_ablation.yaml")
    keys = {n for d in ablation.domains.values() for n in d.names}
    assert {"model.H_cycles", "model.L_cycles", "model.L_layers"} <= keys
    act = SweepConfig.from_yaml(SWEEPS / "act_study.yaml")
    keys = {n for d in act.domains.values() for n in d.names}
    assert {"model.halt_max_steps", "model.halt_exploration_prob", "model.no_ACT_continue"} <= keys


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"space": {"model.H_cycle": {"grid": [1, 2]}}},
         "'model.H_cycle' is not a run config field; did you mean 'model.H_cycles'"),
        ({"space": {"optim.lrr": {"uniform": [0.1, 0.2]}}}, "did you mean 'optim.lr'"),
        ({"scheduller": {"type": "asha"}}, "unknown config key 'scheduller'"),
        ({"base/optim/lrr": 0.1}, "unknown config key 'optim.lrr'"),
        ({"search/metrc": "x"}, "unknown config key 'search.metrc'"),
        ({"space": {}}, "space: is empty"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type: must be one of fifo, asha, got 'hyperband'"),
        ({"search": {"metric": "eval/exact"}}, "'eval/exact' is not a metric runs report"),
        ({"space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}},
         "search.algorithm 'grid' needs grid domains, got 'uniform'"),
        ({"scheduler": {"type": "asha", "time_attr": "flops"}}, "scheduler.max_t: is required"),
        ({"space": {"model.H_cycles": {"gird": [1]}}}, "unknown domain 'gird'"),
        ({"space": {"model.H_cycles": {"grid": []}}}, "grid has no values"),
        ({"space": {"model.H_cycles,model.L_cycles": {"grid": [[1, 2], [3]]}}},
         "each value must be a list of 2"),
        ({"search": {"algorithm": "random"}, "space": {"optim.lr": {"loguniform": [0, 1]}}},
         "loguniform needs low > 0"),
        ({"space": {"model.H_cycles": {"grid": [1, 0]}}}, "model.H_cycles: must be an integer > 0, got 0"),
        ({"space": {"eval.every": {"grid": [8, 3]}}}, "must be a multiple of eval.every"),
        ({"space": {"resources.num_workers": {"grid": [1, 2]}}}, "cannot be swept: resources"),
        ({"space": {"name": {"grid": ["a", "b"]}}}, "cannot be swept"),
        # a trial keeps the checkpoints best by the sweep's metric, so summary.json's best
        # checkpoint holds the best value (tests/test_best_checkpoint.py)
        ({"base/checkpoint/metric": "eval/accuracy"},
         "base.checkpoint.metric: ('eval/accuracy') differs from search.metric"),
        ({"base/checkpoint/mode": "min"}, "base.checkpoint.mode: ('min') differs from search.mode"),
        ({"space": {"checkpoint.metric": {"grid": ["eval/accuracy"]}}},
         "'checkpoint.metric' cannot be swept: a sweep ranks its trials' checkpoints"),
        ({"base/name": "x"}, "base.name: trial runs are named"),
        ({"dataset": {"builder": "sudoku", "sise": 4}}, "dataset.sise: build_sudoku takes no"),
        ({"dataset": {"builder": "chess"}}, "dataset.builder: must be one of"),
        ({"budget": {"flops": -1}}, "budget.flops: must be a number >= 0"),
        # resources cannot be swept (FIXED_KEYS), so the base is where this combination arises
        ({"base/resources": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}},
         "NCCL cannot place two ranks of one process group on one GPU"),
    ],
)  # fmt: skip
def test_bad_sweep_files_fail_naming_the_key(tmp_path, changes, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(**changes)))
    with pytest.raises(ConfigError) as e:
        SweepConfig.from_yaml(path)
    assert needle in str(e.value), str(e.value)
    assert str(path) in str(e.value)


def test_domains_become_tune_spaces():
    sweep = SweepConfig.from_dict(
        tiny(
            **{"search/algorithm": "random", "search/num_samples": 3},
            space={
                "model.H_cycles,model.L_cycles": {"grid": [[1, 2], [3, 1]]},
                "optim.lr": {"loguniform": [1e-4, 1e-2]},
                "model.L_layers": {"randint": [1, 3]},
                "data.augment": {"choice": ["on_the_fly", "none"]},
            },
        )
    )
    assert sweep.num_trials == 6  # 2 grid points x 3 samples
    assert sweep.grid_points() == [
        {"model.H_cycles": 1, "model.L_cycles": 2},
        {"model.H_cycles": 3, "model.L_cycles": 1},
    ]
    ints = sweep.domains["model.L_layers"].tune_domain().sample(size=300)
    assert set(ints) == {1, 2, 3}  # both ends included
    lrs = sweep.domains["optim.lr"].tune_domain().sample(size=300)
    assert all(1e-4 <= v <= 1e-2 for v in lrs)
    assert sweep.domains["model.H_cycles,model.L_cycles"].assign([3, 1]) == {
        "model.H_cycles": 3,
        "model.L_cycles": 1,
    }
    # range bounds are checked too: L_layers = 3 and lr = 1e-2 both build a RunConfig
    assert {p["model.L_layers"] for p in sweep.checked_points()} == {1, 3}


def test_resources_that_can_never_fit_are_refused():
    base = RunConfig.from_dict(tiny()["base"] | {"name": "t"})

    def with_res(**r):
        return base.with_overrides([f"resources.{k}={v}" for k, v in r.items()])

    two_cpus = [{"CPU": 2.0}]
    assert trials_that_fit(with_res(cpus_per_worker=0.5), False, two_cpus) == 4
    gpu_box = [{"CPU": 8.0, "GPU": 1.0}]
    packed = with_res(cpus_per_worker=1, gpus_per_worker=0.25)
    assert trials_that_fit(packed, True, gpu_box) == 4  # four trials share one GPU
    assert trial_resources(packed, True) == {"CPU": 1.0, "GPU": 0.25}
    ddp = with_res(num_workers=2, cpus_per_worker=1)
    assert trial_resources(ddp, False) == {"CPU": 0, "trial_driver": 1}
    assert trials_that_fit(ddp, False, [{"CPU": 2.0, "trial_driver": 4.0}]) == 1
    assert trials_that_fit(ddp, False, [{"CPU": 1.0, "trial_driver": 4}, {"CPU": 1.0}]) == 1
    with pytest.raises(ConfigError, match="no node offers 'trial_driver'"):
        check_fits(ddp, False, [{"CPU": 4.0}])
    with pytest.raises(ConfigError, match="it would wait forever"):
        check_fits(with_res(cpus_per_worker=4), False, two_cpus)
    with pytest.raises(ConfigError, match="GPU"):
        check_fits(with_res(cpus_per_worker=1), True, two_cpus)
    # an autoscaler node group (listed as the nodes it may start) makes a GPU trial placeable
    assert check_fits(packed, True, [{"CPU": 0.0}, *gpu_box * 2]) == 8


def test_pareto_front_and_best_config(tmp_path):
    assert pareto_front([(1, 0.1), (2, 0.05), (3, 0.5), (4, 0.5), (5, 0.9), (0.5, 0.0)]) == [
        (0.5, 0.0),
        (1, 0.1),
        (3, 0.5),
        (5, 0.9),
    ]
    sweep = SweepConfig.from_dict(tiny())
    rows = [
        TrialRow("a_00000", {"model.H_cycles": 1}, 2, 2, 16, best=0.5, best_step=16, flops=2.0),
        TrialRow("a_00001", {"model.H_cycles": 2}, 4, 2, 16, best=0.7, best_step=8, flops=4.0),
        TrialRow("a_00002", {"model.H_cycles": 3}, 6, 2, 16, best=0.7, best_step=8, flops=9.0),
    ]
    best = best_row(rows, "max")
    assert best.trial_id == "a_00001"  # ties go to the cheaper trial
    assert best_row(rows, "min").trial_id == "a_00000"
    path = tmp_path / "best.yaml"
    path.write_text(best_config_yaml(sweep, best))
    cfg = RunConfig.from_yaml(path)
    assert cfg.model.H_cycles == 2 and cfg.name == "t-best"
    assert path.read_text().startswith("# Best trial of sweep 't': trial a_00001")


def test_cli_dry_run_and_errors(tmp_path, capsys):
    assert main(["--sweep", str(SWEEPS / "smoke.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep 'smoke': 4 trial(s)" in out and "grid point 3:" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(space={"model.L_cycle": {"grid": [1]}})))
    assert main(["--sweep", str(bad), "--dry-run"]) == 2
    assert "did you mean 'model.L_cycles'" in capsys.readouterr().err
    assert main(["--sweep", str(SWEEPS / "smoke.yaml"), "--set", "optim.lrr=1", "--dry-run"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["--sweep", str(SWEEPS / "smoke.yaml"), "--resume", "--storage-path",
                 str(missing)]) == 2  # fmt: skip
    assert "--resume: no sweep was started at" in capsys.readouterr().err
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    assert f"{sweep.num_trials} trial(s)" in dry_run_text(sweep, "x")


def test_resume_auto_starts_a_new_sweep_and_continues_a_stored_one(tmp_path, capsys):
    """`--resume auto` picks by what the storage holds: nothing (start it) or a sweep of that
    name (continue it, and the stored file wins over the one given now)."""
    from pipeline.sweeping.store import load_sweep, store_sweep

    args = ["--sweep", str(SWEEPS / "smoke.yaml"), "--storage-path", str(tmp_path), "--dry-run"]
    assert main([*args, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"--resume auto: no sweep yet; starting it at {tmp_path}/smoke" in out
    assert "optim.lr=1e-06" in out
    sweep, text, exp_path = load_sweep(SWEEPS / "smoke.yaml", ["schedule.steps=16"], str(tmp_path))
    store_sweep(exp_path, sweep, text)
    changed = ["--set", "schedule.steps=24"]
    assert main([*args, *changed, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"--resume auto: continuing the sweep stored at {exp_path}" in out
    assert "resuming the stored one" in out  # steps 16 as stored, not the 24 given now
    assert main([*args, "--name", "other", "--resume", "auto"]) == 0
    assert "no sweep yet; starting it" in capsys.readouterr().out


def test_trial_config_sets_nested_values_as_they_are():
    """A point's values go into the base as they are: no text in between, one validation."""
    from pipeline.sweeping.space import trial_config

    base = SweepConfig.from_dict(tiny()).base_config()
    cfg = trial_config(base, {"model.H_cycles": 3, "optim.lr": 1e-6, "eval.pass_ks": [1, 3]},
                       name="t-1", tags={"trm.trial_id": "1"})  # fmt: skip
    assert cfg.model.H_cycles == 3 and cfg.optim.lr == 1e-6 and cfg.eval.pass_ks == [1, 3]
    assert cfg.name == "t-1" and cfg.tracking.tags == {"trm.trial_id": "1"}
    assert base.model.H_cycles == 1  # the base is not changed
    with pytest.raises(ConfigError, match="H_cycles"):
        trial_config(base, {"model.H_cycles": 0})


def test_relative_data_uris_in_the_space_reach_trials_absolute(tmp_path, monkeypatch):
    """A relative `data.uri` in the space (alone or tied to another key) is made absolute for
    the trials, not only for the node probes: trials run in their own directories."""
    from pipeline.sweeping.prepare import resolve, with_absolute_data
    from pipeline.sweeping.trial import SweepContext

    monkeypatch.chdir(tmp_path)
    d = tiny(space={"data.uri": {"grid": ["data/a", "data/b"]},
                    "data.seed,model.L_layers": {"grid": [[0, 1], [1, 2]]}})  # fmt: skip
    sweep = with_absolute_data(SweepConfig.from_dict(d))
    assert sweep.domains["data.uri"].values == [str(tmp_path / "data/a"), str(tmp_path / "data/b")]
    base = resolve(sweep, str(tmp_path / "runs" / "t"))
    assert base.data.uri == str(tmp_path / "data/x")
    ctx = SweepContext(name="t", exp_path=str(tmp_path / "runs" / "t"), base=base,
                       keys={k: dom.names for k, dom in sweep.domains.items()}, metric="m",
                       mode="max", use_gpu=False, code_version="")  # fmt: skip
    params = {"data.uri": sweep.domains["data.uri"].values[1], "data.seed,model.L_layers": [1, 2]}
    monkeypatch.chdir("/")  # a trial's working directory is not the driver's
    cfg = ctx.trial_config(params, "00001")  # as Tune gives them: space key -> value
    assert cfg.data.uri == str(tmp_path / "data/b") and cfg.model.L_layers == 2
    tied = SweepConfig.from_dict(tiny(space={"data.uri,data.seed": {"grid": [["rel", 1]]}}))
    monkeypatch.chdir(tmp_path)
    assert with_absolute_data(tied).domains["data.uri,data.seed"].values == [
        [str(tmp_path / "rel"), 1]
    ]


def test_meta_json_is_read_once_per_dataset_and_again_after_a_rebuild(tmp_path, monkeypatch):
    from pipeline.data import build_sudoku
    from pipeline.data import storage as st
    from pipeline.data.meta import cached_meta

    uri = str(tmp_path / "d")
    build_sudoku(uri, size=4, num_train=16, num_test=8, seed=0, min_clues=10)
    reads = []
    read_bytes = st.LocalStorage.read_bytes
    monkeypatch.setattr(st.LocalStorage, "read_bytes",
                        lambda self, key: reads.append(key) or read_bytes(self, key))  # fmt: skip
    first = cached_meta(uri)
    assert cached_meta(uri) is first and reads.count("meta.json") == 1
    build_sudoku(uri, size=4, num_train=24, num_test=8, seed=1, min_clues=10, overwrite=True)
    assert cached_meta(uri).splits["train"].num_rows == 24  # the rebuilt dataset, not the cache


def test_sweepable_metrics_are_the_names_training_and_evaluation_report():
    """`MetricWindow.summary` and `finish` report exactly the declared names (a real run's
    names: test_train.py); `train/mfu` was logged but refused."""
    import torch

    from pipeline.config.metric_names import EVAL_METRICS, TRAIN_METRICS, known_metric
    from pipeline.evaluation.evaluator import finish
    from pipeline.training.metrics import MetricWindow

    window = MetricWindow(flops_per_row=1.0, peak_flops=1e12, world=1, device=torch.device("cpu"))
    names = ("rows", "count", "loss", "lm_loss", "q_halt_loss", "accuracy", "exact_accuracy",
             "q_halt_accuracy", "steps")  # fmt: skip
    window.add({k: 1.0 for k in names}, wait=0.0)
    assert set(window.summary(lr=1e-3)) == set(TRAIN_METRICS)
    sums = {k: 1.0 for k in ("count", "exact_accuracy", "accuracy", "q_halt_accuracy", "steps",
                             "exact_accuracy_at_halt", "flops", "depth_1", "halt_tau_0.5/steps")}  # fmt: skip
    logged = set(finish(sums, halt_max_steps=1)[0])
    fixed = {k for k in logged if not any(c.isdigit() for c in k)}
    assert fixed == set(EVAL_METRICS)
    assert all(known_metric(k) for k in logged | set(TRAIN_METRICS) | set(EVAL_METRICS))
    SweepConfig.from_dict(tiny(**{"search/metric": "train/mfu", "search/mode": "max"}))

"""Adaptive search (`search.algorithm: optuna`): the sweep file's refusals, the searcher's seeding
and its ranges without Ray trials (the searcher proposes configs on its own); a small real
Optuna sweep with ASHA on a local Ray cluster. The driver killed mid-sweep and resumed with
`--resume auto` is in test_sweep_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config.run import ConfigError
from pipeline.sweeping.cli import main
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.tuner import searcher

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"
SPACE = {
    "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "optim.weight_decay": {"uniform": [0.0, 0.5]},
    "model.H_cycles": {"randint": [1, 2]},
    "model.L_cycles,model.L_layers": {"choice": [[1, 1], [2, 1]]},
}


def optuna_sweep(**search) -> SweepConfig:
    d = yaml.safe_load(SMOKE.read_text())
    d["space"] = SPACE
    d["search"] = {**d["search"], "algorithm": "optuna", "num_samples": 4, **search}
    return SweepConfig.from_dict(d)


def proposals(sweep: SweepConfig, n: int, results: list[float] | None = None) -> list[dict]:
    """The first `n` configs the sweep's searcher proposes; with `results`, each proposal is
    reported back as finished with that metric before the next is asked for."""
    from ray import tune

    alg = searcher(sweep, concurrency=n)
    space = {k: d.tune_domain() for k, d in sweep.domains.items()}
    assert alg.set_search_properties(sweep.search.metric, sweep.search.mode, space)
    out = []
    for i in range(n):
        config = alg.suggest(f"t{i}")
        assert config is not None and config is not tune.search.Searcher.FINISHED
        out.append(config)
        if results is not None:
            alg.on_trial_complete(f"t{i}", {sweep.search.metric: results[i]})
    return out


def test_optuna_refuses_a_grid_key_naming_it(tmp_path, capsys):
    d = yaml.safe_load(SMOKE.read_text())
    d["search"]["algorithm"] = "optuna"  # smoke.yaml's space is two grids
    with pytest.raises(ConfigError, match=r"space\['model.H_cycles'\]: search.algorithm 'optuna' "
                       r"cannot take a grid .* write \{choice: \[...\]\}"):  # fmt: skip
        SweepConfig.from_dict(d)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main(["--sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot take a grid" in err and str(path) in err, err


def test_optuna_sweep_lists_its_trials_and_their_ranges(capsys):
    sweep = optuna_sweep()
    assert sweep.num_trials == 4
    assert sweep.search.startup_trials == 10  # Optuna's own default
    with pytest.raises(ConfigError, match="startup_trials"):
        optuna_sweep(startup_trials=0)


def test_the_same_seed_proposes_the_same_trials_and_values_stay_in_range():
    sweep = optuna_sweep(seed=3, startup_trials=4)
    results = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.6, 0.7, 0.8, 0.05, 0.15, 0.25]
    first = proposals(sweep, 12, results)
    assert proposals(sweep, 12, results) == first  # seeded: startup draws and TPE's proposals
    other = proposals(optuna_sweep(seed=4, startup_trials=4), 12, results)
    assert other != first
    for config in first + other:
        assert 1.0e-4 <= config["optim.lr"] <= 1.0e-2
        assert 0.0 <= config["optim.weight_decay"] <= 0.5
        assert config["model.H_cycles"] in (1, 2)  # randint: both ends included
        assert config["model.L_cycles,model.L_layers"] in ([1, 1], [2, 1])
    assert {c["model.H_cycles"] for c in first + other} == {1, 2}


def test_tpe_proposals_follow_the_results():
    """After its random start, TPE proposes learning rates near the best trials': with results
    that reward a high learning rate, its proposals sit higher than with results that reward a
    low one (the same seed, so the same random start)."""
    sweep = optuna_sweep(seed=0, startup_trials=8)
    start = proposals(sweep, 8)
    lrs = [c["optim.lr"] for c in start]
    high = proposals(sweep, 16, [lr for lr in lrs] + [0.0] * 8)  # the higher the better
    low = proposals(sweep, 16, [-lr for lr in lrs] + [0.0] * 8)
    assert high[:8] == low[:8] == start
    mean = lambda cs: sum(c["optim.lr"] for c in cs) / len(cs)  # noqa: E731
    assert mean(high[8:]) > mean(low[8:]), (mean(high[8:]), mean(low[8:]))


@pytest.mark.slow
def test_small_optuna_sweep_with_asha_runs_and_records_its_searcher(ray_local, tmp_path, capfd):
    """~1-2 min: 4 Optuna trials with ASHA on the smoke model; every trial's values lie in the
    space, the parent run records the algorithm, and Tune saved the searcher's state."""
    from pipeline.sweeping.run import run_sweep
    from pipeline.sweeping.store import load_sweep
    from pipeline.tracking.tracker import find_run, read_run

    d = yaml.safe_load(SMOKE.read_text())
    d["space"] = SPACE
    d["search"].update(algorithm="optuna", num_samples=4, seed=1, startup_trials=2)
    d["base"]["eval"]["num_pictures"] = 0
    path = tmp_path / "optuna.yaml"
    path.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep, text, exp_path = load_sweep(
        str(path), [f"data.uri={tmp_path / 'data'}", f"tracking.uri={uri}"],
        str(tmp_path / "runs"), "optuna",
    )  # fmt: skip
    out = run_sweep(sweep, text, exp_path)
    console = capfd.readouterr().out
    assert out.exit_code == 0, console[-3000:]
    assert len(out.rows) == 4, console[-3000:]
    for row in out.rows:
        assert row.stop_reason in ("completed", "early-stopped"), (row, console[-2000:])
        lr = row.params["optim.lr"]
        assert 1.0e-4 <= lr <= 1.0e-2 and row.params["model.H_cycles"] in (1, 2), row.params
    assert len({row.params["optim.lr"] for row in out.rows}) == 4  # four proposals, not one
    parent = find_run(uri, "trm-sweeps", f"sweep:{exp_path}")
    assert read_run(uri, parent)["params"]["search.algorithm"] == "optuna"
    assert list(Path(exp_path).glob("searcher-state-*.pkl")), sorted(Path(exp_path).iterdir())
    saved = yaml.safe_load((Path(exp_path) / "sweep.yaml").read_text())["search"]
    assert saved["algorithm"] == "optuna"

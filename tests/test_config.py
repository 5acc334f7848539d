"""RunConfig: YAML + --set overrides, unknown keys and nonsense values rejected by name, every
shipped config loads, --help documents every key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config.fields import StrictConfig
from pipeline.config.run import ConfigError, RunConfig, apply_overrides, describe

ROOT = Path(__file__).resolve().parent.parent
BASE = {"data": {"uri": "/tmp/somewhere"}, "model": {"hidden_size": 64, "num_heads": 4}}


def make(**sections) -> RunConfig:
    d = {**BASE, **sections}
    return RunConfig.from_dict(d)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_name_real_fields(path):
    cfg = RunConfig.from_yaml(path)
    raw = yaml.safe_load(path.read_text())
    # every key in the file survives into the typed config (nothing silently dropped)
    flat = cfg.flat()
    for section, body in raw.items():
        if isinstance(body, dict) and body and section != "tracking":
            for key in body:
                assert f"{section}.{key}" in flat, f"{path.name}: {section}.{key} lost"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    if cfg.resources.use_gpu:  # GPU runs compile, as the official trainer does
        assert cfg.resources.compile != "off", path.name


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({**BASE, "optim": {"lr": 1e-3}}))
    cfg = RunConfig.from_yaml(
        p,
        [
            "model.H_cycles=2",
            "optim.lr=3e-4",
            "optim.ema=false",
            "resources.use_gpu=null",
            "eval.pass_ks=[1, 2, 5]",
            "tracking.tags.team=infra",
        ],
    )
    assert cfg.to_dict()["model"] == {"hidden_size": 64, "num_heads": 4, "H_cycles": 2}
    assert cfg.model.H_cycles == 2 and cfg.model.hidden_size == 64
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.ema is False
    assert cfg.resources.use_gpu is None
    assert cfg.eval.pass_ks == [1, 2, 5]
    assert cfg.tracking.tags == {"team": "infra"}
    # ints where floats are wanted are accepted; YAML's '1e4' string too
    assert make(optim={"lr": 1}).optim.lr == 1.0
    assert make(optim={"ema_rate": "0.5"}).optim.ema_rate == 0.5
    assert cfg.with_overrides(["schedule.steps=7"]).schedule.steps == 7
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_fractional_gpus_only_for_one_worker_or_without_gpus():
    half = ["resources.gpus_per_worker=0.5"]
    one = make().with_overrides([*half, "resources.use_gpu=true"])
    assert one.resources.gpus_per_worker == 0.5  # one worker may share a GPU with others
    cpu = make().with_overrides([*half, "resources.num_workers=2", "resources.use_gpu=false"])
    assert cpu.resources.num_workers == 2  # gloo on CPUs: the GPU share means nothing
    whole = make().with_overrides(["resources.num_workers=2", "resources.use_gpu=true"])
    assert whole.resources.gpus_per_worker == 1.0
    with pytest.raises(ConfigError, match="NCCL cannot place two ranks"):  # null: GPUs if any
        make().with_overrides([*half, "resources.num_workers=2"])


@pytest.mark.parametrize(
    "d, overrides, needle",
    [
        (BASE, ["optim.lrr=1"], "unknown config key 'optim.lrr'; known keys here: beta1"),
        (BASE, ["optim.lrr=1"], "(did you mean 'lr'?)"),
        (BASE, ["optimiser.lr=1"], "unknown config key 'optimiser'; known keys here: checkpoint"),
        (BASE, ["model.H_cycle=2"], "unknown config key 'model.H_cycle'; known keys here: H_cycles"),
        (BASE, ["model.batch_size=4"], "model.batch_size: is set by data.global_batch_size"),
        (BASE, ["optim.lr=-1"], "optim.lr: must be a number > 0, got -1"),
        (BASE, ["optim.lr=abc"], "optim.lr: must be a number > 0, got 'abc'"),
        (BASE, ["optim.lr_min_ratio=2"], "optim.lr_min_ratio: must be a number in [0, 1], got 2"),
        (BASE, ["optim.loss_type=mse"], "optim.loss_type: must be one of stablemax, softmax, got 'mse'"),
        (BASE, ["optim.ema=maybe"], "optim.ema: must be true/false, got 'maybe'"),
        (BASE, ["schedule.steps=0"], "schedule.steps: must be an integer > 0 or null, got 0"),
        (BASE, ["schedule.steps=1.5"], "schedule.steps: must be an integer > 0 or null, got 1.5"),
        (BASE, ["model.hidden_size=-3"], "model.hidden_size: must be an integer > 0, got -3"),
        (BASE, ["model.num_heads=5"], "model.num_heads: (5) must divide hidden_size (64)"),
        (BASE, ["data.global_batch_size=10", "resources.num_workers=3"],
         "data.global_batch_size: (10) must be divisible by resources.num_workers (3)"),
        (BASE, ["checkpoint.every=300", "eval.every=200"],
         "checkpoint.every: (300) must be a multiple of eval.every (200)"),
        (BASE, ["checkpoint.mode=best"], "checkpoint.mode: must be one of max, min, got 'best'"),
        (BASE, ["checkpoint.metric=train/loss"],
         "checkpoint.metric: must name an eval metric such as 'eval/exact_accuracy', got 'train/loss'"),
        (BASE, ["checkpoint.metric=eval/exact"],
         "checkpoint.metric: 'eval/exact' is not a metric runs report; use one of eval/count, "),
        (BASE, ["resources.cpus_per_worker=0"], "resources.cpus_per_worker: must be a number > 0, got 0"),
        (BASE, ["name=has space"], "name: must be a non-empty string of letters"),
        ({"model": {}}, [], "data.uri: is required"),
        (BASE, ["noequals"], "override 'noequals' must look like section.key=value"),
        (
            BASE,
            ["resources.use_gpu=true", "resources.num_workers=2", "resources.gpus_per_worker=0.5"],
            "NCCL cannot place two ranks",
        ),
        (BASE, ["resources.compile=fast"], "resources.compile: must be one of off, blocks, model, got 'fast'"),
        (BASE, ["eval.halt_thresholds=[0.5, 1.5]"], "eval.halt_thresholds[1]: must be < 1, got 1.5"),
        (BASE, ["eval.pass_ks=[]"], "eval.pass_ks: must be a non-empty list, got []"),
        (BASE, ["resources.use_gpu=maybe"], "resources.use_gpu: must be true/false or null"),
        (BASE, ["optim"], "override 'optim' must look like section.key=value"),
        (BASE, ["optim=3"], "optim: must be a mapping, got 3"),
        ({**BASE, "optim": {1: 2}}, [], "optim: keys must be strings, got 1"),
        (BASE, ["schedule.steps=true"], "schedule.steps: must be an integer > 0 or null, got True"),
    ],
)  # fmt: skip
def test_bad_values_name_the_field_and_the_problem(d, overrides, needle):
    """The message names the key and says what is wrong with its value (the key alone would
    also be in a message that only echoes the input)."""
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(apply_overrides(d, overrides))
    assert needle in str(e.value), str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")


def test_every_field_documented_and_help_lists_it():
    cfg = make()
    text = describe()
    for name, section in RunConfig.model_fields.items():
        assert section.description, f"{name} has no description"
        if name == "name":
            continue
        assert isinstance(getattr(cfg, name), StrictConfig)
        for key, f in section.annotation.model_fields.items():
            assert f.description, f"{name}.{key} has no description"
            assert f"{name}.{key}:" in text or (name, key) == ("model", "batch_size")
    assert "model.H_cycles:" in text and "<from dataset>" in text
    out = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "--set" in out.stdout and "optim.lr_warmup_steps:" in out.stdout
    assert "mlflow ui --backend-store-uri" in out.stdout

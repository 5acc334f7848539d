"""pipeline/training/device.py: narrow host-to-device batches, on-device metric sums, and compiled
training steps that match eager ones (puzzle-table gradient and SignSGD update included)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline.config.run import ConfigError, RunConfig
from pipeline.training.device import (
    SIMULATE_GPUS_ENV,
    DeviceSums,
    compile_model,
    narrowest,
    pins_memory,
    to_device,
    trial_device,
)
from trm import TRM, TRMConfig
from trm.losses import act_loss
from trm.optim import AdamATan2, SignSGD


@pytest.mark.parametrize(
    "values, dtype",
    [
        ([0, 10, 3], np.uint8),  # Sudoku tokens
        ([-100, 1, 10], np.int8),  # labels with the ignore id
        ([0, 255], np.uint8),
        ([-1, 200], np.int16),
        ([0, 70_000], np.int32),  # puzzle identifiers of a large table
        ([0, 2**40], np.int64),
    ],
)
def test_narrowest_integer_type_keeps_the_values(values, dtype):
    a = np.array(values, dtype=np.int64)
    n = narrowest(a)
    assert n.dtype == dtype and n.flags.c_contiguous
    np.testing.assert_array_equal(n.astype(np.int64), a)
    assert narrowest(np.zeros((0, 3), np.int64)).dtype == np.int8
    with pytest.raises(ValueError, match="integer array"):
        narrowest(np.zeros(2, np.float32))


def test_to_device_gives_the_int64_batch():
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, 11, (4, 81)),
        "labels": np.where(rng.random((4, 81)) < 0.3, -100, rng.integers(1, 11, (4, 81))),
        "puzzle_identifiers": rng.integers(0, 100_000, 4),
        "extra": np.zeros(4),  # not a batch key: left behind
    }
    batch["inputs"] = batch["inputs"][:, ::-1]  # not contiguous
    out = to_device(batch, torch.device("cpu"))
    assert set(out) == {"inputs", "labels", "puzzle_identifiers"}
    for k, t in out.items():
        assert t.dtype == torch.int64
        np.testing.assert_array_equal(t.numpy(), batch[k])
    assert not pins_memory(torch.device("cpu"))


def test_device_sums_equal_python_float_sums_and_start_over():
    g = torch.Generator().manual_seed(0)
    acc, ref = DeviceSums(), {}
    for _ in range(5):
        step = {
            "rows": 8,
            "loss": torch.rand((), generator=g, dtype=torch.float64) * 3,
            "q_halt_loss": torch.rand((), generator=g) * 3,  # float32
            "count": torch.randint(0, 9, (), generator=g),  # int64
        }
        acc.add(step)
        for k, v in step.items():
            ref[k] = ref.get(k, 0.0) + float(v)
    assert acc.take() == ref  # bit for bit
    assert acc.take() == {}
    acc.add({"rows": 2})
    assert acc.take() == {"rows": 2.0}


def test_compile_setting_values():
    base = {"data": {"uri": "x"}}
    for value, scope in ((True, "model"), (False, "off"), ("blocks", "blocks")):
        cfg = RunConfig.from_dict({**base, "resources": {"compile": value}})
        assert cfg.resources.compile == scope
    with pytest.raises(ConfigError, match=r"resources\.compile: must be one of off, blocks, model"):
        RunConfig.from_dict({**base, "resources": {"compile": "graph"}})
    with pytest.raises(ValueError, match="compile scope"):
        compile_model(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), "all")


def _table_model() -> TRM:
    cfg = TRMConfig(
        hidden_size=16, num_heads=2, expansion=2, L_layers=2, H_cycles=2, L_cycles=1,
        seq_len=6, vocab_size=7, num_puzzle_identifiers=5, puzzle_emb_ndim=16, puzzle_emb_len=1,
        halt_max_steps=3, halt_exploration_prob=0.0,  # no random draws: RNG streams may differ
    )  # fmt: skip
    torch.manual_seed(0)
    model = TRM(cfg).train()
    with torch.no_grad():
        model.q_head.weight.normal_()  # zero-initialised: give the table a gradient path via q
    return model


def _train(model: TRM, scope: str, batches: list[dict]) -> dict:
    opt = AdamATan2(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sparse = SignSGD(model.puzzle_emb, lr=1e-3, weight_decay=0.1)
    step = compile_model(model, model, scope)
    carry, record = model.initial_carry(batches[0]), {"loss": [], "table_grad": []}
    for batch in batches:
        carry, out = step(carry, batch)
        loss, _ = act_loss(out, carry)
        (loss / len(batch["inputs"])).backward()
        record["loss"].append(loss.detach())
        record["table_grad"].append(model.puzzle_emb.local_weight.grad.clone())
        opt.step()
        sparse.step()
        opt.zero_grad(set_to_none=True)
        sparse.zero_grad()
    record["state"] = copy.deepcopy(model.state_dict())
    return record


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_training_step_equals_eager_and_trains_the_puzzle_table(scope):
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "inputs": torch.randint(0, 7, (4, 6), generator=g),
            "labels": torch.randint(1, 7, (4, 6), generator=g),
            "puzzle_identifiers": torch.tensor([1, 3, 1, 4]),
        }
        for _ in range(3)
    ]
    eager = _train(_table_model(), "off", batches)
    compiled = _train(_table_model(), scope, batches)
    # inductor's fused CPU kernels reorder fp32 sums: agreement to ~1e-5, not bitwise
    for a, b in zip(eager["loss"], compiled["loss"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(eager["table_grad"], compiled["table_grad"]):
        assert a.abs().sum() > 0  # the puzzle rows got a gradient through the model
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for k, v in eager["state"].items():
        # one sign flip of a near-zero gradient moves an entry by 2 lr: bound by that
        torch.testing.assert_close(compiled["state"][k], v, rtol=0, atol=2.5e-3, msg=k)
    table = compiled["state"]["puzzle_emb.weight"]
    assert (table != 0).any(-1).tolist() == [False, True, False, True, True]  # rows 1, 3, 4


def test_gpu_trials_compute_on_the_cpu_only_under_the_simulation_switch(monkeypatch):
    monkeypatch.delenv(SIMULATE_GPUS_ENV, raising=False)
    assert trial_device(True).type == "cuda"  # no silent fallback: CUDA calls fail as they should
    assert trial_device(False).type == "cpu"
    monkeypatch.setenv(SIMULATE_GPUS_ENV, "1")
    assert trial_device(True).type == "cpu"
    monkeypatch.setenv(SIMULATE_GPUS_ENV, "yes")
    with pytest.raises(ValueError, match=f"{SIMULATE_GPUS_ENV} must be 0 or 1, got 'yes'"):
        trial_device(True)

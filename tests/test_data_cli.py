"""pipeline/build_data.py end to end: each subcommand on a tiny input, its summary line and errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.data import ShardStream, read_meta
from trm.puzzles import maze as M

ROOT = Path(__file__).resolve().parents[1]


def run(*args, ok=True):
    p = subprocess.run([sys.executable, str(ROOT / "pipeline" / "build_data.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (p.returncode == 0) == ok, p.stderr
    return p


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for cmd in ("sudoku", "maze", "arc", "import-csv", "verify"):
        assert cmd in out
    assert "--min-rating" in run("sudoku", "--help").stdout


def test_sudoku_then_verify(tmp_path):
    out = tmp_path / "s6"
    p = run(
        "sudoku", "--size", 6, "--num-train", 120, "--num-test", 10, "--workers", 1, "--out", out
    )
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"sudoku dataset at {out}: train 120 rows, test 10 rows;")
    assert "seq_len 36, vocab 8" in last and "[build_data] 6x6 sudoku puzzles" in p.stderr
    assert run("verify", out).stdout.startswith("ok: sudoku dataset")
    # Same command again: the dataset is reused, not rebuilt; other parameters need --overwrite.
    assert read_meta(str(out)) == read_meta(str(out))
    again = run("sudoku", "--size", 6, "--num-train", 120, "--num-test", 10, "--out", out)
    assert "train 120 rows" in again.stdout
    err = run("sudoku", "--size", 6, "--num-train", 99, "--num-test", 10, "--out", out, ok=False)
    assert err.returncode == 2 and "--overwrite" in err.stderr


def test_maze_generation_labels_shortest_paths(tmp_path):
    out = tmp_path / "maze"
    p = run(
        "maze", "--num-train", 4, "--num-test", 2, "--min-path", 50, "--workers", 1, "--out", out
    )
    assert "maze dataset at" in p.stdout and "train 4 rows, test 2 rows" in p.stdout
    meta = read_meta(str(out))
    assert (meta.seq_len, meta.vocab_size) == (900, 6)
    for b in ShardStream(str(out), batch_size=2, seed=1, with_index=True):
        for x, y in zip(b["inputs"], b["labels"]):
            assert M.is_shortest_path(x, y)
            free, s, g = M._parts(x)
            assert M.distances(free, s)[g] > 50


def test_arc_from_task_files_and_a_bad_csv(tmp_path):
    rng = np.random.default_rng(0)
    for subset in ("training", "evaluation"):
        (tmp_path / "tasks" / subset).mkdir(parents=True)
        g = rng.integers(0, 10, (3, 4)).tolist()
        task = {"train": [{"input": g, "output": g}] * 2, "test": [{"input": g, "output": g}]}
        (tmp_path / "tasks" / subset / f"{subset[:2]}1.json").write_text(json.dumps(task))
    p = run(
        "arc", "--source", f"tasks:{tmp_path / 'tasks'}", "--num-aug", 3, "--out", tmp_path / "arc"
    )
    assert "arc dataset at" in p.stdout and "train 5 rows, test 1 rows" in p.stdout
    assert "9 puzzle ids" in p.stdout  # 1 + 2 tasks x (3 + 1) variants
    bad = tmp_path / "bad.csv"
    bad.write_text("source,question,answer,rating\nx,1.2,123,0\n")
    err = run("import-csv", "sudoku", "--train", bad, "--out", tmp_path / "imp", ok=False)
    assert err.returncode == 2
    assert f"{bad}, line 2: question: expected 81 characters" in err.stderr

"""pipeline/build_data.py end to end: each subcommand on a tiny input, its summary line and errors.

One test runs the script as a subprocess (the real entry point); the others call its `main`
in-process, which parses the same arguments and prints the same lines, to keep the suite fast.
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.build_data import main
from pipeline.data import ShardStream, read_meta
from trm.puzzles import maze as M

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("sudoku", "maze", "arc", "import-csv", "verify"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["sudoku", "--help"])
    assert "--min-rating" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["import-csv", "--help"])
    assert (
        "16 characters (4x4, 2x2 boxes), 36 (6x6, 2x3 boxes) or 81 (9x9)" in capsys.readouterr().out
    )


def test_sudoku_script_then_verify(tmp_path, capsys):
    out = tmp_path / "s6"
    args = ["sudoku", "--size", "6", "--num-train", "120", "--num-test", "10", "--out", str(out)]
    p = subprocess.run([sys.executable, str(ROOT / "pipeline" / "build_data.py"), *args,
                        "--workers", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"sudoku dataset at {out}: train 120 rows, test 10 rows;")
    assert "seq_len 36, vocab 8" in last and "[build_data] 6x6 sudoku puzzles" in p.stderr
    rc, text, _ = cli(capsys, "verify", out)
    assert rc == 0 and text.startswith("ok: sudoku dataset")
    # Other parameters at the same URI need --overwrite: exit status 2 and a one-line reason.
    rc, _, err = cli(capsys, *args[:4], "99", *args[5:])
    assert rc == 2 and "--overwrite" in err and read_meta(str(out)).splits["train"].num_rows == 120


def test_maze_generation_labels_shortest_paths(tmp_path, capsys):
    out = tmp_path / "maze"
    rc, text, _ = cli(capsys, "maze", "--num-train", 4, "--num-test", 2, "--min-path", 50,
                      "--workers", 1, "--out", out)  # fmt: skip
    assert rc == 0 and "maze dataset at" in text and "train 4 rows, test 2 rows" in text
    meta = read_meta(str(out))
    assert (meta.seq_len, meta.vocab_size) == (900, 6)
    for b in ShardStream(str(out), batch_size=2, seed=1, with_index=True):
        for x, y in zip(b["inputs"], b["labels"]):
            assert M.is_shortest_path(x, y)
            free, s, g = M._parts(x)
            assert M.distances(free, s)[g] > 50


def test_arc_from_task_files_and_a_bad_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for subset in ("training", "evaluation"):
        (tmp_path / "tasks" / subset).mkdir(parents=True)
        g = rng.integers(0, 10, (3, 4)).tolist()
        task = {"train": [{"input": g, "output": g}] * 2, "test": [{"input": g, "output": g}]}
        (tmp_path / "tasks" / subset / f"{subset[:2]}1.json").write_text(json.dumps(task))
    rc, text, _ = cli(capsys, "arc", "--source", f"tasks:{tmp_path / 'tasks'}", "--num-aug", 3,
                      "--out", tmp_path / "arc")  # fmt: skip
    assert rc == 0 and "arc dataset at" in text and "train 5 rows, test 1 rows" in text
    assert "9 puzzle ids" in text  # 1 + 2 tasks x (3 + 1) variants
    bad = tmp_path / "bad.csv"
    bad.write_text("source,question,answer,rating\nx,1.2,123,0\n")
    rc, _, err = cli(capsys, "import-csv", "sudoku", "--train", bad, "--out", tmp_path / "imp")
    assert (
        rc == 2
        and f"{bad}, line 2: question: expected 16 (4x4), 36 (6x6) or 81 (9x9) characters, got 3"
        in err
    )


def test_help_shows_examples_defaults_and_s3_settings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "import-csv sudoku --train train.csv --test test.csv \\\n" in out  # the docstring
    assert "AWS_ENDPOINT_URL" in out
    for cmd in ("sudoku", "maze", "arc", "import-csv", "verify", "inspect"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "AWS_ENDPOINT_URL" in text and "credential chain" in text, cmd
        options = text.split("options:")[1].split("S3:")[0]
        # every option has a help text: an option alone on its line has its help below
        lines = [ln.strip() for ln in options.splitlines() if ln.strip()]
        for ln, nxt in itertools.pairwise(lines):
            if ln.startswith("-") and "  " not in ln:
                assert not nxt.startswith("-"), (cmd, ln)
    with pytest.raises(SystemExit):
        main(["sudoku", "--help"])
    assert "--size {4,6,9}" in capsys.readouterr().out


def test_large_sudoku_is_refused_before_any_work(tmp_path, capsys):
    from pipeline.data import build_sudoku

    with pytest.raises(SystemExit):
        main(["sudoku", "--size", "16", "--out", str(tmp_path / "s16")])
    assert "invalid choice: 16 (choose from 4, 6, 9)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sudoku size 16 is not supported: one of 4, 6, 9"):
        build_sudoku(str(tmp_path / "s16"), size=16)
    assert not (tmp_path / "s16").exists()


def test_failed_import_leaves_nothing_behind(tmp_path, capsys, s3_env):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,question,answer,rating\nx,1.2,123,0\n")
    out = tmp_path / "imp"
    rc, _, err = cli(capsys, "import-csv", "sudoku", "--train", bad, "--out", out)
    assert rc == 2 and "line 2" in err and not out.exists()
    made = tmp_path / "made"  # a directory the user made stays, emptied again
    made.mkdir()
    rc, _, _ = cli(capsys, "import-csv", "sudoku", "--train", bad, "--out", made)
    assert rc == 2 and made.is_dir() and not list(made.iterdir())
    uri = f"s3://{s3_env.bucket}/imp"
    rc, _, err = cli(capsys, "import-csv", "sudoku", "--train", bad, "--out", uri)
    assert rc == 2 and "line 2" in err
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket).get("KeyCount", 0) == 0

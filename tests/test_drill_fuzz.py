"""Drill 6, bad input fuzzed with hypothesis: run configs (dicts, YAML text, --set overrides, the
CLI), CSV and JSON importers, meta.json and the shard reader get random and adversarial input.

Every failure must be the project's own error for that input (ConfigError, InputError,
DatasetError), raised by project code (not a library's exception escaping from deep inside it),
within a few seconds (no hang), and a failed import leaves an existing dataset byte-for-byte
as it was. Runs that succeed are fine where the input may be valid (every property must still
meet some refused input); random bytes as a shard never are: those must be a DatasetError.

The default run keeps the example counts small (~20 s in all); the `slow` twins run the same
properties with many more examples:

    pytest tests/test_drill_fuzz.py -m slow
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import signal
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml
from drills import TINY_RUN, build_tiny_sudoku, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
import trm
from pipeline.config.run import ConfigError, RunConfig, apply_overrides, flatten
from pipeline.data import DatasetError, InputError, ShardStream, build_arc, import_csv, read_meta
from pipeline.data.meta import META_FILE
from pipeline.train import main
from trm.puzzles import maze, sudoku

PROJECT = (Path(pipeline.__file__).parent.resolve(), Path(trm.__file__).parent.resolve())
FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = settings(FAST, max_examples=150)
HANG_S = 20
failures: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _some_input_refused():
    """Each property feeds mostly bad input: one whose examples met no clear error at all has
    stopped reaching the error paths (a strategy or a check that went blind)."""
    before = sum(failures.values())
    yield
    assert sum(failures.values()) > before, "no example was refused with a clear error"


class Hang(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def _record_counts():
    """Print how many clear errors each kind of input produced in this module's run."""
    yield
    record("fuzz", runs=1, clear_errors=sum(failures.values()), by_input=json.dumps(failures))


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S):
    """Fail (instead of waiting forever) when the body runs longer than `seconds`."""

    def alarm(*_):
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_clear(e: BaseException, expected: type, *names: str, what: str) -> None:
    """`e` is `expected`, raised by project code, and its message names each of `names`."""
    assert isinstance(e, expected), (
        f"{what}: {type(e).__module__}.{type(e).__name__} instead of {expected.__name__}: {e}\n"
        + "".join(traceback.format_exception(e))
    )
    last = Path(traceback.extract_tb(e.__traceback__)[-1].filename).resolve()
    assert any(last.is_relative_to(p) for p in PROJECT), f"{what}: raised in {last}: {e}"
    for name in names:
        assert name in str(e), f"{what}: message does not name {name!r}: {e}"
    failures[what] = failures.get(what, 0) + 1


def outcome(fn, expected: type, *names: str, what: str, invalid: bool = False):
    """fn() under the hang guard; None when it raised a clear error, else its value. With
    `invalid` the input can never be valid: fn() must raise."""
    try:
        with no_hang():
            value = fn()
    except Hang:
        raise
    except Exception as e:
        check_clear(e, expected, *names, what=what)
        return None
    assert not invalid, f"{what}: accepted an input that can never be valid"
    return value


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def assert_untouched(before: dict[str, str], root: Path) -> None:
    after = snapshot(root)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"a failed input modified what was already written: {changed}"


# ---- strategies -----------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 1024, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "1e4", "nan", "-inf", "true", "null", "s3://", "~", "0x10", "1_000"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
YAML_CHARS = "$:-{}[]&*!|>'\"%@`\t\n #,?.=0123456789abcdeflmnorstuxyz_\\\x00\x85\u2028\ufeff"


def _config_dict(data_uri: str, storage: str) -> dict:
    d = json.loads(json.dumps(TINY_RUN))
    d["data"]["uri"] = data_uri
    d["checkpoint"]["storage_path"] = storage
    return d


def _paths(d: dict) -> list[str]:
    leaves = list(flatten(d))
    sections = [k for k, v in d.items() if isinstance(v, dict)]
    return leaves + sections + ["model.no_such_field", "optim.lrr", "bogus", "data.uri.x"]


def _set(d: dict, dotted: str, value) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return d


# ---- run configs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("fuzz-data") / "sudoku4")
    build_tiny_sudoku(uri, num_train=32, num_test=16)
    return uri


def _check_config_dict(base: dict, edits: list) -> None:
    d = base
    for path, value in edits:
        d = _set(d, path, value)
    cfg = outcome(lambda: RunConfig.from_dict(d), ConfigError, what="config dict")
    if cfg is not None:  # accepted: it must survive the trip across a Ray boundary unchanged
        assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _edits(base: dict):
    return st.lists(st.tuples(st.sampled_from(_paths(base)), json_values), min_size=1, max_size=3)


_BASE = _config_dict("/data/x", "/runs")


@FAST
@given(edits=_edits(_BASE))
def test_run_config_dicts(edits):
    _check_config_dict(_BASE, edits)


@pytest.mark.slow
@DEEP
@given(edits=_edits(_BASE))
def test_run_config_dicts_deep(edits):
    _check_config_dict(_BASE, edits)


def _check_yaml_text(tmp: Path, text: str | bytes) -> None:
    path = tmp / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    before = path.read_bytes()
    # errors in content name the key (the CLI user knows the file); syntax errors the file
    outcome(lambda: RunConfig.from_yaml(path), ConfigError, what="config YAML")
    assert path.read_bytes() == before


_yaml_text = st.one_of(
    st.text(alphabet=YAML_CHARS, max_size=80),
    st.binary(max_size=40),
    st.builds(  # a real config with a few characters spliced in
        lambda pos, junk: (lambda s: s[: pos % (len(s) + 1)] + junk + s[pos % (len(s) + 1) :])(
            json.dumps(_BASE, indent=1).replace('"', "")
        ),
        st.integers(0, 10_000),
        st.text(alphabet=YAML_CHARS, min_size=1, max_size=6),
    ),
)


@FAST
@given(text=_yaml_text)
def test_run_config_yaml_text(tmp_path, text):
    _check_yaml_text(tmp_path, text)


@pytest.mark.slow
@DEEP
@given(text=_yaml_text)
def test_run_config_yaml_text_deep(tmp_path, text):
    _check_yaml_text(tmp_path, text)


_overrides = st.lists(
    st.one_of(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(_paths(_BASE)),
            st.text(alphabet=YAML_CHARS, max_size=12),
        ),
        st.text(alphabet=YAML_CHARS, max_size=16),
    ),
    min_size=1,
    max_size=3,
)


def _check_cli(data: str, tmp: Path, overrides: list[str], capsys) -> None:
    """`train.py --dry-run --set ...`: exit 0, or exit 2 with one 'error:' line naming the
    problem; never 'training failed' (an unexpected exception) and never a traceback."""
    path = tmp / "run.yaml"
    path.write_text(json.dumps(_config_dict(data, str(tmp / "runs"))))
    outcome(lambda: apply_overrides(_BASE, overrides), ConfigError, what="overrides")
    argv = [str(path), "--dry-run"] + [f"--set={o}" for o in overrides]
    with no_hang():
        code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (overrides, code, err)
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err, err
        failures["cli"] = failures.get("cli", 0) + 1


@FAST
@given(overrides=_overrides)
def test_cli_overrides(data, tmp_path, capsys, overrides):
    _check_cli(data, tmp_path, overrides, capsys)


@pytest.mark.slow
@settings(DEEP, max_examples=60)  # each example runs the CLI's checks (~0.6 s)
@given(overrides=_overrides)
def test_cli_overrides_deep(data, tmp_path, capsys, overrides):
    _check_cli(data, tmp_path, overrides, capsys)


# ---- sweep files ----------------------------------------------------------------------------
_SWEEP = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml").read_text())
_DOMAIN_SPECS = st.one_of(
    json_values,
    st.builds(
        lambda k, v: {k: v},
        st.sampled_from(["grid", "choice", "uniform", "loguniform", "randint", "range"]),
        json_values,
    ),
)


def _sweep_paths() -> list[str]:
    paths = [p for p in _paths(_SWEEP) if not p.startswith("space.")]
    more = ["space.optim.lr", "space.model.H_cycles", "space.model.nope", "space.name",
            "space.model.L_layers,model.L_cycles"]  # fmt: skip
    return [*paths, *more]


def _check_sweep(tmp: Path, edits, as_text: str | None) -> None:
    from pipeline.sweeping.config import SweepConfig

    path = tmp / "sweep.yaml"
    if as_text is None:
        d = _SWEEP
        for dotted, value in edits:
            if dotted.startswith("space."):  # keys under space are dotted names themselves
                d = json.loads(json.dumps(d))
                if not isinstance(d.get("space"), dict):  # an earlier edit replaced it
                    d["space"] = {}
                d["space"][dotted.removeprefix("space.")] = value
            else:
                d = _set(d, dotted, value)
        path.write_text(yaml.safe_dump(d, allow_unicode=True))
    else:
        path.write_bytes(as_text.encode("utf-8", "surrogatepass"))
    before = path.read_bytes()
    sweep = outcome(lambda: SweepConfig.from_yaml(path), ConfigError, what="sweep file")
    assert path.read_bytes() == before
    if sweep is not None:  # accepted: every grid point makes a valid run config
        for point in sweep.grid_points():
            sweep.base_config(point)


_sweep_edits = st.lists(
    st.tuples(st.sampled_from(_sweep_paths()), st.one_of(json_values, _DOMAIN_SPECS)),
    min_size=1,
    max_size=3,
)
_sweep_text = st.one_of(
    st.none(),
    st.builds(
        lambda pos, junk: (lambda t: t[: pos % (len(t) + 1)] + junk + t[pos % (len(t) + 1) :])(
            yaml.safe_dump(_SWEEP)
        ),
        st.integers(0, 10_000),
        st.text(alphabet=YAML_CHARS, min_size=1, max_size=6),
    ),
)


@FAST
@given(edits=_sweep_edits, as_text=_sweep_text)
def test_sweep_files(tmp_path, edits, as_text):
    _check_sweep(tmp_path, edits, as_text)


@pytest.mark.slow
@DEEP
@given(edits=_sweep_edits, as_text=_sweep_text)
def test_sweep_files_deep(tmp_path, edits, as_text):
    _check_sweep(tmp_path, edits, as_text)


# ---- CSV importers --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_rows():
    rng = np.random.default_rng(0)
    sud = []
    for _ in range(3):
        q, a, r = sudoku.generate(rng, 9, min_clues=30)
        sud.append(["gen", sudoku.format_board(q), sudoku.format_board(a), str(r)])
    mz = []
    for _ in range(2):
        q, a, n = maze.generate(rng, side=8, min_path=6)
        mz.append(["gen", maze.decode(q), maze.decode(a), str(n)])
    return {"sudoku": sud, "maze": mz}


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    """A dataset the failed imports must leave alone (each import writes over a copy)."""
    root = tmp_path_factory.mktemp("existing") / "d"
    build_tiny_sudoku(str(root), num_train=32, num_test=16)
    return root


def _fresh_copy(existing: Path, tmp: Path) -> Path:
    import shutil

    dst = tmp / "out"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(existing, dst)
    return dst


def _csv_text(rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["source", "question", "answer", "rating"])
    w.writerows(rows)
    return buf.getvalue().encode()


_csv_mutation = st.one_of(
    st.tuples(
        st.just("field"),
        st.integers(0, 99),
        st.integers(0, 3),
        st.text(alphabet='0123456789.#SGo ,"\n\x00x-é', max_size=100),
    ),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("swap"), st.integers(0, 99)),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
)


def _mutate_csv(rows, m) -> bytes:
    rows = [list(r) for r in rows]
    kind = m[0]
    if kind == "field":
        _, i, j, text = m
        rows[i % len(rows)][j] = text
    elif kind == "swap":
        r = rows[m[1] % len(rows)]
        r[1], r[2] = r[2], r[1]
    data = _csv_text(rows)
    if kind == "insert":
        at = m[1] % (len(data) + 1)
        data = data[:at] + m[2] + data[at:]
    elif kind == "truncate":
        data = data[: m[1] % (len(data) + 1)]
    elif kind == "bytes":
        data = m[1]
    return data


def _check_import(csv_rows, existing, tmp: Path, task: str, mutation) -> None:
    out = _fresh_copy(existing, tmp)
    before = snapshot(out)
    old_meta = read_meta(str(out))
    path = tmp / f"{task}.csv"
    path.write_bytes(_mutate_csv(csv_rows[task], mutation))
    meta = outcome(
        lambda: import_csv(str(out), task, str(path), overwrite=True),
        InputError,
        str(path),
        what=f"{task} CSV",
    )
    if meta is None:  # failed: what was there is untouched and still reads
        assert_untouched(before, out)
        assert read_meta(str(out)) == old_meta
        for _ in ShardStream(str(out), batch_size=8, shuffle=False, augment=False):
            pass


_TASKS = st.sampled_from(["sudoku", "maze"])


@FAST
@given(task=_TASKS, mutation=_csv_mutation)
def test_csv_importers(csv_rows, existing, tmp_path, task, mutation):
    _check_import(csv_rows, existing, tmp_path, task, mutation)


@pytest.mark.slow
@DEEP
@given(task=_TASKS, mutation=_csv_mutation)
def test_csv_importers_deep(csv_rows, existing, tmp_path, task, mutation):
    _check_import(csv_rows, existing, tmp_path, task, mutation)


# ---- ARC JSON importer ----------------------------------------------------------------------
GOOD_TASK = {
    "train": [{"input": [[0, 1], [2, 3]], "output": [[3, 2], [1, 0]]}],
    "test": [{"input": [[1, 1]], "output": [[2, 2]]}],
}
grids = st.one_of(
    json_values,
    st.lists(st.lists(st.integers(-2, 12), min_size=0, max_size=4), max_size=4),
    st.lists(st.lists(st.integers(0, 9), min_size=31, max_size=31), min_size=1, max_size=1),
)
_arc_file = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.tuples(st.sampled_from(["train", "test"]), st.sampled_from(["input", "output"]), grids).map(
        lambda t: json.dumps({**GOOD_TASK, t[0]: [{**GOOD_TASK[t[0]][0], t[1]: t[2]}]}).encode()
    ),
    st.integers(1, 200).map(lambda n: json.dumps(GOOD_TASK).encode()[:n]),
)


def _check_arc(existing, tmp: Path, content: bytes) -> None:
    out = _fresh_copy(existing, tmp)
    before = snapshot(out)
    folder = tmp / "tasks" / "training"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.json").write_text(json.dumps(GOOD_TASK))
    bad = folder / "fuzzed.json"
    bad.write_bytes(content)
    meta = outcome(
        lambda: build_arc(
            str(out), f"tasks:{tmp / 'tasks'}", ["training"], num_aug=1, overwrite=True
        ),
        InputError,
        str(bad),
        what="ARC JSON",
    )
    if meta is None:
        assert_untouched(before, out)


@FAST
@given(content=_arc_file)
def test_arc_json_importer(existing, tmp_path, content):
    _check_arc(existing, tmp_path, content)


@pytest.mark.slow
@DEEP
@given(content=_arc_file)
def test_arc_json_importer_deep(existing, tmp_path, content):
    _check_arc(existing, tmp_path, content)


# ---- meta.json and the shard reader ---------------------------------------------------------
def _meta_paths(d, prefix=()):
    """Every key path in `d` as a tuple (keys written by an earlier edit may hold dots)."""
    out = []
    for k, v in d.items() if isinstance(d, dict) else enumerate(d):
        key = (*prefix, k)
        out.append(key)
        if isinstance(v, (dict, list)) and v:
            out += _meta_paths(v, key)
    return out


def _check_meta(existing, tmp: Path, edits) -> None:
    out = _fresh_copy(existing, tmp)
    d = json.loads((out / META_FILE).read_text())
    for pick, value in edits:
        paths = _meta_paths(d)
        if not paths:  # an earlier edit left nothing to edit
            break
        node, parts = d, paths[pick % len(paths)]
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    (out / META_FILE).write_text(json.dumps(d))
    meta_name = f"{out}/{META_FILE}"
    meta = outcome(lambda: read_meta(str(out)), DatasetError, meta_name, what="meta.json")
    if meta is None:
        return
    for split in meta.splits:
        outcome(
            lambda s=split: [b for b in ShardStream(str(out), s, batch_size=4, shuffle=False)],
            DatasetError,
            str(out),
            what="meta.json then read",
        )


_meta_edits = st.lists(st.tuples(st.integers(0, 10**4), json_values), min_size=1, max_size=2)


@FAST
@given(edits=_meta_edits)
def test_meta_json(existing, tmp_path, edits):
    _check_meta(existing, tmp_path, edits)


@pytest.mark.slow
@DEEP
@given(edits=_meta_edits)
def test_meta_json_deep(existing, tmp_path, edits):
    _check_meta(existing, tmp_path, edits)


def _check_shard_bytes(existing, tmp: Path, content: bytes) -> None:
    """A shard replaced by other bytes (random, or junk between Parquet's magic numbers), with
    meta.json updated to match them (so only the reader's own checks can catch it): always a
    DatasetError naming the shard, never success and never anything else."""
    out = _fresh_copy(existing, tmp)
    d = json.loads((out / META_FILE).read_text())
    sh = d["splits"]["train"]["shards"][0]
    (out / sh["path"]).write_bytes(content)
    sh["num_bytes"], sh["sha256"] = len(content), hashlib.sha256(content).hexdigest()
    (out / META_FILE).write_text(json.dumps(d))
    for verify in (False, True):
        outcome(
            lambda v=verify: list(ShardStream(str(out), batch_size=4, verify_checksums=v)),
            DatasetError,
            f"{out}/{sh['path']}",
            what="shard bytes",
            invalid=True,
        )


_shard_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"PAR1" + b + b"PAR1"),
    st.tuples(st.binary(max_size=100), st.integers(0, 2**32 - 1)).map(
        lambda t: b"PAR1" + t[0] + t[1].to_bytes(4, "little") + b"PAR1"
    ),
)


@FAST
@given(content=_shard_bytes)
def test_shard_reader(existing, tmp_path, content):
    _check_shard_bytes(existing, tmp_path, content)


@pytest.mark.slow
@DEEP
@given(content=_shard_bytes)
def test_shard_reader_deep(existing, tmp_path, content):
    _check_shard_bytes(existing, tmp_path, content)

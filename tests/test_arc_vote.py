"""ARC pass@K (pipeline/evaluation/arc_vote.py): a hand-computed vote, truncation, two ranks (merged, and
over a real gloo process group), aggregation across evaluations, the variant rows of on-the-fly
and materialised datasets, and a tiny ARC training run that logs the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config.run import ConfigError
from pipeline.data import ShardStream, build_arc, read_meta
from pipeline.evaluation.arc_vote import ArcVoting, grid_hash, merge, pass_at_k, vote_table
from pipeline.evaluation.evaluator import evaluate
from trm.puzzles import arc

# ---- a hand-computed case ----------------------------------------------------------------------
# Three test tasks: A (inputs a1, a2), B (b1), C (c1, c2; c2 never gets a prediction).
# Identifiers 2 and 4 are augmented variants (rotation/flip + colour map): their predictions are
# mapped back to the task's frame before they are counted.
FRAMES = {
    1: ("A", 0, np.arange(10, dtype=np.uint8)),
    2: ("A", 1, np.array([0, 3, 1, 2, 9, 8, 7, 6, 5, 4], np.uint8)),
    3: ("B", 0, np.arange(10, dtype=np.uint8)),
    4: ("B", 5, np.array([0, 9, 8, 7, 6, 5, 4, 3, 2, 1], np.uint8)),
    5: ("C", 0, np.arange(10, dtype=np.uint8)),
}
TEST_INPUTS = {"A": 2, "B": 1, "C": 2}
G = {  # small asymmetric grids: every dihedral/colour variant of one differs from it
    name: np.array(rows, np.uint8)
    for name, rows in {
        "a1": [[1, 2], [3, 0]], "LA1": [[2, 2, 1]], "H": [[5, 0], [0, 6], [7, 7]],
        "a2": [[4, 0, 0]], "LA2": [[4], [4]], "W": [[1]],
        "b1": [[0, 8], [9, 0]], "LB": [[3, 1], [1, 2]], "W1": [[6, 6]], "W2": [[2], [7]],
        "c1": [[5, 5, 1], [0, 2, 0]], "LC": [[9, 0, 9]],
    }.items()
}  # fmt: skip


def _record(pid: int, grid_in: str, label: str, pred: str, q: float) -> dict:
    """What evaluate(..., keep_predictions=True) keeps for one row of variant `pid`."""
    _, tid, cmap = FRAMES[pid]

    def canvas(g):
        return arc.encode(arc.apply(G[g], tid, cmap))

    labels = canvas(label).astype(np.int16)
    labels[labels == arc.PAD] = -100
    return {"puzzle_identifier": pid, "inputs": canvas(grid_in).astype(np.int8),
            "labels": labels, "pred": canvas(pred).astype(np.int8), "q_halt": q}  # fmt: skip


RECORDS = [
    # a1: label and H tie at 2 votes; H has the higher mean q -> solved at k=2, not at k=1
    _record(1, "a1", "LA1", "LA1", -1.0), _record(2, "a1", "LA1", "LA1", -1.0),
    _record(1, "a1", "LA1", "H", 1.0), _record(2, "a1", "LA1", "H", 1.0),
    # a2: 3 votes beat one confident wrong vote -> solved at k=1
    _record(1, "a2", "LA2", "LA2", -2.0), _record(2, "a2", "LA2", "LA2", -2.0),
    _record(1, "a2", "LA2", "LA2", -2.0), _record(2, "a2", "LA2", "W", 5.0),
    # b1: the label comes third by votes, whatever its q -> solved at neither k=1 nor k=2
    _record(3, "b1", "LB", "W1", 0.0), _record(4, "b1", "LB", "W1", 0.0),
    _record(3, "b1", "LB", "W1", 0.0), _record(4, "b1", "LB", "W2", 0.0),
    _record(3, "b1", "LB", "W2", 0.0), _record(4, "b1", "LB", "LB", 9.0),
    # c1: one right vote; c2: no record at all
    _record(5, "c1", "LC", "LC", 0.0),
]  # fmt: skip


def test_hand_computed_votes_ties_by_q_and_a_missing_input_counts_wrong():
    table = vote_table(RECORDS, FRAMES.__getitem__)
    assert set(table) == {("A", grid_hash(G["a1"])), ("A", grid_hash(G["a2"])),
                          ("B", grid_hash(G["b1"])), ("C", grid_hash(G["c1"]))}  # fmt: skip
    label, votes = table[("A", grid_hash(G["a1"]))]
    assert label == grid_hash(G["LA1"])
    assert votes[grid_hash(G["LA1"])] == pytest.approx([2, 2 / (1 + np.e)])
    assert votes[grid_hash(G["H"])] == pytest.approx([2, 2 / (1 + np.exp(-1))])
    out = pass_at_k(table, TEST_INPUTS, [1, 2, 3])
    # A: a1 at k>=2, a2 at k>=1 | B: b1 at k>=3 | C: c1 at k>=1, c2 never (of 2 inputs)
    assert out["eval/arc_pass_at_1"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)  # 0.3333
    assert out["eval/arc_pass_at_2"] == pytest.approx((2 / 2 + 0 + 1 / 2) / 3)  # 0.5
    assert out["eval/arc_pass_at_3"] == pytest.approx((2 / 2 + 1 + 1 / 2) / 3)  # 0.8333
    assert (out["eval/arc_tasks"], out["eval/arc_test_inputs"]) == (3, 5)
    assert out["eval/arc_test_inputs_voted"] == 4
    with pytest.raises(ValueError, match="'C', which is not a test task"):
        pass_at_k(table, {"A": 2, "B": 1}, [1])


def test_truncated_evaluation_scores_lower_never_higher():
    full = pass_at_k(vote_table(RECORDS, FRAMES.__getitem__), TEST_INPUTS, [1, 2])
    # evaluation cut off before b1's last vote (the right one) and before task C
    cut = pass_at_k(vote_table(RECORDS[:-2], FRAMES.__getitem__), TEST_INPUTS, [1, 2])
    assert cut["eval/arc_pass_at_1"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # 0.1667, not 0.25
    assert cut["eval/arc_pass_at_2"] == pytest.approx((2 / 2 + 0 + 0) / 3)  # 0.3333, not 0.5
    assert cut["eval/arc_tasks"] == 3 and cut["eval/arc_test_inputs_voted"] == 3
    assert all(cut[k] <= full[k] for k in ("eval/arc_pass_at_1", "eval/arc_pass_at_2"))


def test_tables_of_two_ranks_merge_to_the_whole():
    whole = vote_table(RECORDS, FRAMES.__getitem__)
    rank0 = vote_table(RECORDS[0::2], FRAMES.__getitem__)
    rank1 = vote_table(RECORDS[1::2], FRAMES.__getitem__)
    merged = merge([rank0, rank1])
    assert set(merged) == set(whole)
    for key, (label, votes) in whole.items():
        assert merged[key][0] == label
        assert {h: pytest.approx(v) for h, v in votes.items()} == merged[key][1]
    assert pass_at_k(merged, TEST_INPUTS, [1, 2]) == pass_at_k(whole, TEST_INPUTS, [1, 2])
    assert vote_table(RECORDS[0::2], FRAMES.__getitem__) == rank0  # merge copied, not mutated


# ---- on a real (tiny) dataset --------------------------------------------------------------------
class EchoModel:
    """Predicts its input canvas: right exactly on tasks whose output is their input."""

    def __init__(self, halt_max_steps: int = 2):
        from trm import TRMConfig

        self.config = TRMConfig(halt_max_steps=halt_max_steps, seq_len=900, vocab_size=12)
        self.training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        self.training = mode

    def rollout_preds(self, inputs, puzzle_identifiers, num_steps=None):
        from trm.model import StepPreds

        S = num_steps or self.config.halt_max_steps
        q = torch.zeros(inputs.shape[0])
        return StepPreds(inputs.expand(S, *inputs.shape), q.expand(S, -1), q.expand(S, -1))


GRIDS = {  # asymmetric grids and colours, so every dihedral/colour variant differs
    "e1": ([[1, 2, 0], [0, 0, 3]], [[4, 4], [5, 0], [0, 6]]),  # two test inputs, output = input
    "e2": ([[7, 0], [0, 8], [1, 1]],),  # one test input, output = its transpose: echo is wrong
}


def _arc_source(root, n_train_tasks: int = 1) -> str:
    rng = np.random.default_rng(0)
    for subset in ("training", "evaluation"):
        (root / subset).mkdir(parents=True)
    for name, inputs in GRIDS.items():
        out = (lambda g: g) if name == "e1" else (lambda g: np.transpose(g).tolist())
        test = [{"input": g, "output": out(g)} for g in inputs]
        task = {"train": [{"input": inputs[0], "output": out(inputs[0])}], "test": test}
        (root / "evaluation" / f"{name}.json").write_text(json.dumps(task))
    for i in range(n_train_tasks):
        pairs = []
        for _ in range(4):
            g = rng.integers(0, 10, (3, 4)).tolist()
            pairs.append({"input": g, "output": g})
        task = {"train": pairs[:3], "test": pairs[3:]}
        (root / "training" / f"t{i}.json").write_text(json.dumps(task))
    return f"tasks:{root}"


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("arc")
    src = _arc_source(root / "src", n_train_tasks=4)
    fly, mat = str(root / "fly"), str(root / "mat")
    build_arc(fly, src, num_aug=7, seed=3)
    build_arc(mat, src, num_aug=3, seed=3, materialise=True)
    return {"fly": fly, "mat": mat}


def _records(uri: str, voting: ArcVoting, max_examples: int = 0):
    stream = ShardStream(uri, "test", batch_size=4, shuffle=False, augment=False, drop_last=False)
    res = evaluate(
        EchoModel(), voting.rows(stream, 4), device=torch.device("cpu"), halt_max_steps=2,
        depth_steps=0, max_examples=max_examples, keep_predictions=True,
    )  # fmt: skip
    return res


def test_on_the_fly_variants_are_rows_of_the_one_evaluation(arc_data):
    uri = arc_data["fly"]
    meta = read_meta(uri)
    assert meta.extra["test_inputs"] == {"e1": 2, "e2": 1}
    voting = ArcVoting(uri, meta, pass_ks=[1, 2])
    assert voting.num_variants == 8 and "every distinct variant" in voting.summary
    res = _records(uri, voting)
    assert res.sums["count"] == 3 * 8 == len(res.predictions)  # 3 test inputs x 8 variants
    assert {r["puzzle_identifier"] for r in res.predictions} == set(
        voting.pools.identifier(np.repeat([0, 1], 8), np.tile(np.arange(8), 2)).tolist()
    )
    table = vote_table(res.predictions, voting.frame_of)
    originals = [("e1", GRIDS["e1"][0]), ("e1", GRIDS["e1"][1]), ("e2", GRIDS["e2"][0])]
    assert set(table) == {(t, grid_hash(np.array(g, np.uint8))) for t, g in originals}
    for _, votes in table.values():  # every variant mapped back: one grid, 8 votes
        assert [v[0] for v in votes.values()] == [8]
    m = voting.metrics(res.predictions)
    assert m == {"eval/arc_pass_at_1": 0.5, "eval/arc_pass_at_2": 0.5, "eval/arc_tasks": 2.0,
                 "eval/arc_test_inputs": 3.0, "eval/arc_test_inputs_voted": 3.0}  # fmt: skip
    # eval.max_examples = 8 rows: only e1's first test input -> (1/2 + 0) / 2, not 1/1
    cut = voting.metrics(_records(uri, voting, max_examples=8).predictions)
    assert cut["eval/arc_pass_at_1"] == 0.25 and cut["eval/arc_test_inputs_voted"] == 1


def test_a_variant_cap_is_explicit_and_logged(arc_data):
    meta = read_meta(arc_data["fly"])
    capped = ArcVoting(arc_data["fly"], meta, pass_ks=[2], max_variants=3)
    assert capped.num_variants == 3 and "3 variants per test input, CAPPED" in capped.summary
    assert "(the dataset holds 8)" in capped.summary
    assert _records(arc_data["fly"], capped).sums["count"] == 3 * 3
    assert ArcVoting(arc_data["fly"], meta, pass_ks=[2], max_variants=50).num_variants == 8
    del meta.extra["test_inputs"]  # a dataset built before the counts were recorded
    with pytest.raises(ConfigError, match=r"data.uri: .* does not list its test inputs"):
        ArcVoting(arc_data["fly"], meta, pass_ks=[2])


def test_materialised_variants_are_its_test_rows(arc_data):
    uri = arc_data["mat"]
    meta = read_meta(uri)
    voting = ArcVoting(uri, meta, pass_ks=[1, 2])
    res = _records(uri, voting)
    assert res.sums["count"] == meta.splits["test"].num_rows == 3 * 4
    m = voting.metrics(res.predictions)
    assert (m["eval/arc_pass_at_1"], m["eval/arc_test_inputs_voted"]) == (0.5, 3.0)
    with pytest.raises(ConfigError, match=r"eval\.arc_variants: 2 cannot cap the materialised"):
        ArcVoting(uri, meta, pass_ks=[1], max_variants=2)


def test_aggregation_across_evaluations_is_off_by_default(arc_data):
    uri = arc_data["fly"]
    meta = read_meta(uri)
    records = _records(uri, ArcVoting(uri, meta, pass_ks=[1])).predictions
    first_input = records[:8]  # e1's first test input, all 8 variants
    fresh, pooled = (
        ArcVoting(uri, meta, pass_ks=[1]),
        ArcVoting(uri, meta, pass_ks=[1], aggregate=True),
    )
    for voting in (fresh, pooled):
        assert voting.metrics(records)["eval/arc_pass_at_1"] == 0.5
    assert fresh.metrics(first_input)["eval/arc_pass_at_1"] == 0.25  # this evaluation only
    again = pooled.metrics(first_input)  # pooled with the first evaluation's votes
    # the echo model solves both test inputs of e1 and not e2's. This evaluation alone voted
    # on e1's first input only: (1/2 + 0/1) / 2 tasks; the pool still holds the first
    # evaluation's votes on all three inputs: (2/2 + 0/1) / 2
    assert again["eval/arc_pass_at_1"] == 0.25 and again["eval/arc_pooled_pass_at_1"] == 0.5
    assert again["eval/arc_test_inputs_voted"] == 1
    assert "eval/arc_pooled_pass_at_1" not in fresh.metrics(first_input)
    assert "pooled across evaluations" in pooled.summary and "pooled" not in fresh.summary


# Two evaluations of one run (same test inputs, later weights), hand-computed. pass@1 of
# e1 alone, e2 alone and pooled; "q" = the q_halt logit of a vote.
#   a1 (label LA1): e1 LA1 x2, H x1 | e2 H x2, LA1 x1 | pooled 3 : 3, tie -> mean
#       sigmoid(q): LA1 (q 2) beats H (q 0)                   e1 yes, e2 no,  pooled yes
#   a2 (label LA2): e1 W (q 5), LA2 (q -4) | e2 LA2 (q 3), W (q -3) | pooled 2 : 2, mean
#       sigmoid(q): W (0.9933 + 0.0474) / 2 = 0.520 beats LA2 (0.0180 + 0.9526) / 2 = 0.485
#                                                             e1 no,  e2 yes, pooled no
#   b1 (label LB): e1 W1 (q 2), LB (q 0) | e2 W2 (q 2), LB (q 0) | pooled LB x2, W1, W2
#                                                             e1 no,  e2 no,  pooled yes
# Task C (2 inputs) never votes. pass@1 = e1 (1/2 + 0 + 0) / 3, e2 (1/2 + 0 + 0) / 3,
# pooled (1/2 + 1 + 0) / 3: the pooled vote of the run differs from its last evaluation's.
E1 = [
    _record(1, "a1", "LA1", "LA1", 2.0), _record(2, "a1", "LA1", "LA1", 2.0),
    _record(1, "a1", "LA1", "H", 0.0),
    _record(1, "a2", "LA2", "W", 5.0), _record(2, "a2", "LA2", "LA2", -4.0),
    _record(3, "b1", "LB", "W1", 2.0), _record(4, "b1", "LB", "LB", 0.0),
]  # fmt: skip
E2 = [
    _record(2, "a1", "LA1", "H", 0.0), _record(1, "a1", "LA1", "H", 0.0),
    _record(2, "a1", "LA1", "LA1", 2.0),
    _record(2, "a2", "LA2", "LA2", 3.0), _record(1, "a2", "LA2", "W", -3.0),
    _record(4, "b1", "LB", "W2", 2.0), _record(3, "b1", "LB", "LB", 0.0),
]  # fmt: skip


def test_pooled_votes_of_two_evaluations_hand_computed(arc_data):
    uri = arc_data["fly"]
    voting = ArcVoting(uri, read_meta(uri), pass_ks=[1, 2], aggregate=True)
    voting.frame_of, voting.test_inputs = FRAMES.__getitem__, TEST_INPUTS  # the case above
    first, last = voting.metrics(E1), voting.metrics(E2)
    assert first["eval/arc_pass_at_1"] == pytest.approx(1 / 6)
    assert first["eval/arc_pooled_pass_at_1"] == pytest.approx(1 / 6)  # a pool of e1 alone
    assert last["eval/arc_pass_at_1"] == pytest.approx(1 / 6)  # e2's own vote
    assert last["eval/arc_pooled_pass_at_1"] == pytest.approx(1 / 2)  # e1 and e2 pooled
    # at k=2 every voted input's label is among the top two, alone (b1: W2 and LB) and
    # pooled: A 2/2, B 1/1, C 0/2 -> 2/3
    assert last["eval/arc_pass_at_2"] == last["eval/arc_pooled_pass_at_2"] == pytest.approx(2 / 3)
    # the pool is e1 + e2 exactly: merging the two tables gives the same scores
    both = pass_at_k(merge([vote_table(E1, FRAMES.__getitem__), vote_table(E2, FRAMES.__getitem__)]),
                     TEST_INPUTS, [1, 2])  # fmt: skip
    assert both["eval/arc_pass_at_1"] == last["eval/arc_pooled_pass_at_1"]


def _rank(rank: int, port: int, uri: str, parts: list, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        voting = ArcVoting(uri, read_meta(uri), pass_ks=[1, 2])
        out.put((rank, voting.metrics(parts[rank])))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_to_rank_0_and_report_the_same(arc_data):
    """A real 2-process gloo group: each rank votes on half the rows; both report the whole."""
    from conftest import two_ranks

    uri = arc_data["fly"]
    voting = ArcVoting(uri, read_meta(uri), pass_ks=[1, 2])
    records = _records(uri, voting).predictions
    whole = voting.metrics(records)  # no process group: gather_to_main is the identity
    got = two_ranks(_rank, uri, [records[0::2], records[1::2]])
    assert got[0] == got[1] == whole


def test_tiny_arc_run_logs_pass_at_k(arc_data, tmp_path):
    """A real run (one process, MLflow in sqlite) on the on-the-fly dataset; eval.max_examples
    cuts the 3 x 8 variant rows to 12, so only 2 of the 3 test inputs get votes."""
    from tiny_run import tiny_run

    from pipeline.config.metric_names import known_metric
    from pipeline.tracking.tracker import find_run, read_run
    from pipeline.train import run_info
    from pipeline.training.preflight import preflight
    from pipeline.training.worker import LocalCheckpoints, run_in_process

    storage, db = str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_run(arc_data["fly"], storage, "name=arc-tiny", "data.global_batch_size=8",
                   "schedule.steps=2", "eval.every=2", "eval.max_examples=12",
                   "eval.depth_steps=2", "checkpoint.every=2", "tracking.experiment=trm-arc",
                   tracking_uri=db)  # fmt: skip
    preflight(cfg, storage, cluster=False)
    final = run_in_process(
        cfg, run_info(cfg, "arc-tiny", storage), report=LocalCheckpoints(tmp_path / "r")
    )
    assert final["eval/count"] == 12
    assert (final["eval/arc_tasks"], final["eval/arc_test_inputs"]) == (2, 3)
    assert final["eval/arc_test_inputs_voted"] == 2
    assert [k for k in final if k.startswith("eval/") and not known_metric(k)] == []
    metrics = read_run(db, find_run(db, "trm-arc", f"{storage}/arc-tiny"))["metrics"]
    for name in (
        "eval/arc_pass_at_1",
        "eval/arc_pass_at_2",
        "eval/arc_tasks",
        "eval/arc_test_inputs",
    ):
        assert [step for step, _ in metrics[name]] == [2], name
        assert metrics[name][0][1] == final[name]
    assert 0 <= final["eval/arc_pass_at_1"] <= final["eval/arc_pass_at_2"] <= 1
    bad = cfg.with_overrides(
        [
            "eval.arc_variants=0",
            "data.augment=fixed_pool",
            "data.num_aug=3",
            "data.uri=" + arc_data["mat"],
        ]
    )
    preflight(bad, storage, cluster=False)  # materialised, no cap: fine
    with pytest.raises(ConfigError, match="cannot cap the materialised"):
        preflight(bad.with_overrides(["eval.arc_variants=2"]), storage, cluster=False)

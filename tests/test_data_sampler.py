"""The training sampler (pipeline/data/sampler.py through ShardStream): per-epoch coverage across
ranks with the remainder carried over, disjoint equal rank slices, determinism, one variant per
group per epoch, batch mixing near uniform sampling, the `inspect` CLI, S3, and the augmentation
regimes (fixed_pool / on_the_fly / none) with their config errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config.run import ConfigError, RunConfig, check_data_against
from pipeline.data import DatasetWriter, ShardStream, build_sudoku, read_meta
from pipeline.data.builders import sudoku_meta_fields
from pipeline.data.coverage import sampler_report
from pipeline.data.sampler import Groups
from trm.puzzles import sudoku as S

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """301 training rows (odd, 301 % 3 == 1) in row groups of 32."""
    uri = str(tmp_path_factory.mktemp("data") / "odd")
    build_sudoku(uri, size=4, num_train=301, num_test=20, seed=0, min_clues=10,
                 rows_per_shard=100, row_group_rows=32)  # fmt: skip
    return uri


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """60 puzzles x 5 stored variants x 3 rows each, written puzzle by puzzle (the layout that
    defeated a windowed shuffle): group = puzzle, variant column = variant."""
    uri = str(tmp_path_factory.mktemp("data") / "grouped")
    w = DatasetWriter(uri, seq_len=16, extra_columns={"variant": pa.int32()},
                      rows_per_shard=400, row_group_rows=64)  # fmt: skip
    rng = np.random.default_rng(0)
    for g in range(60):
        for v in range(5):
            x = rng.integers(1, 6, (3, 16))
            w.add("train", inputs=x, labels=x, puzzle_identifier=np.zeros(3, np.int32),
                  group=np.full(3, g), variant=np.full(3, v))  # fmt: skip
    gen = {"name": "test", "version": "1", "seed": 0, "params": {}}
    w.commit(
        splits=("train",), **sudoku_meta_fields(4, {"mode": "materialised", "num_aug": 4}, gen)
    )
    return uri


def _plan(uri, world, B, epoch, **kw):
    """(rows, epochs) of every rank for one epoch, as [batches, world * B] global batches."""
    parts = [ShardStream(uri, batch_size=B, rank=r, world_size=world, epoch=epoch, **kw).batch_rows()
             for r in range(world)]  # fmt: skip
    return np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_once_per_epoch_and_the_remainder_carries_over(odd, world):
    B, n = 16, 301
    assert n % world or world == 1
    seen = {}
    for epoch in range(3):
        rows, passes = _plan(odd, world, B, epoch, seed=4)
        for p, r in zip(passes.reshape(-1), rows.reshape(-1)):
            seen.setdefault(int(p), []).append(int(r))
    for p in range(3):  # epochs 0..2 are complete: each row exactly once across ranks
        assert sorted(seen[p]) == list(range(n)), p
    assert 0 < len(seen[3]) < world * B  # epoch 2's last batch started epoch 3's permutation
    # what trained in epoch 0 and 1 together: two whole permutations and a head of the third
    total = sum(len(v) for v in seen.values())
    assert total % (world * B) == 0 and total // (world * B) == -(-3 * n // (world * B))


@pytest.mark.parametrize("world", [2, 3])
def test_rank_slices_are_disjoint_and_equal(odd, world):
    B = 8
    lens = {len(ShardStream(odd, batch_size=B, rank=r, world_size=world, epoch=1))
            for r in range(world)}  # fmt: skip
    assert len(lens) == 1
    rows, passes = _plan(odd, world, B, 1, seed=1)
    assert rows.shape == (lens.pop(), world * B)
    for r, p in zip(rows, passes):
        key = set(zip(p.tolist(), r.tolist()))
        assert len(key) == world * B  # no (epoch, row) twice in one global batch
    # every rank's batches are exactly what it yields when reading
    b = list(ShardStream(odd, batch_size=B, rank=1, world_size=world, epoch=1, seed=1,
                         with_index=True))  # fmt: skip
    np.testing.assert_array_equal(np.stack([x["index"] for x in b]), rows[:, B : 2 * B])


def test_deterministic_per_seed_and_epoch(odd):
    a = _plan(odd, 2, 8, 2, seed=5)[0]
    np.testing.assert_array_equal(a, _plan(odd, 2, 8, 2, seed=5)[0])
    assert not np.array_equal(a, _plan(odd, 2, 8, 3, seed=5)[0])
    assert not np.array_equal(a, _plan(odd, 2, 8, 2, seed=6)[0])


def test_grouped_data_one_variant_per_group_per_epoch(grouped):
    g = Groups.from_columns(*_columns(grouped))
    assert g.num_groups == 60 and (g.variants == 5).all() and (g.size == 3).all()
    chosen = {}
    plans = [_plan(grouped, 3, 8, e, augment="fixed_pool", num_aug=4, seed=2) for e in range(6)]
    rows = np.concatenate([r.reshape(-1) for r, _ in plans])
    passes = np.concatenate([p.reshape(-1) for _, p in plans])
    for epoch in range(6):  # an epoch's head may be read at the end of the previous one
        picked = rows[passes == epoch]
        assert len(picked) == len(set(picked.tolist())) == 60 * 3
        group, variant = (c[picked] for c in _columns(grouped))
        for gg in range(60):  # all three rows of one variant of every group
            vs = variant[group == gg]
            assert len(vs) == 3 and len(set(vs.tolist())) == 1
            chosen.setdefault(gg, set()).add(int(vs[0]))
    assert np.mean([len(v) for v in chosen.values()]) > 3  # variants change between epochs
    # none: the originals (variant 0) only
    rows, passes = _plan(grouped, 1, 8, 0, augment="none")
    assert set(_columns(grouped)[1][rows[passes == 0]].tolist()) == {0}


def _columns(uri):
    import pyarrow.parquet as pq

    meta = read_meta(uri)
    t = pa.concat_tables([pq.read_table(f"{uri}/{sh.path}", columns=["group", "variant"])
                          for sh in meta.splits["train"].shards])  # fmt: skip
    return t.column("group").to_numpy(), t.column("variant").to_numpy()


@pytest.mark.parametrize("world", [1, 3])
def test_batches_mix_groups_like_uniform_sampling(grouped, world):
    r = sampler_report(grouped, batch_size=48, world_size=world, epochs=3, seed=1,
                       augment="fixed_pool", num_aug=4)  # fmt: skip
    c = r["coverage"]
    assert (c["duplicates"], c["missed"], c["seen"], c["groups_seen"]) == (0, 0, 540, 180)
    g = r["groups_per_batch"]
    assert 30 < g["uniform_expectation"] < 48
    assert g["median"] >= 0.9 * g["uniform_expectation"]


def test_inspect_cli_json(grouped):
    out = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "build_data.py"), "inspect", grouped,
         "--batch-size", "48", "--world-size", "3", "--epochs", "2", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["rows"] == 900 and r["groups"] == 60
    cov = r["coverage"]
    assert {k: cov[k] for k in ("rows", "seen", "duplicates", "missed")} == {
        "rows": 360, "seen": 360, "duplicates": 0, "missed": 0}  # fmt: skip
    g = r["groups_per_batch"]
    assert g["median"] >= 0.9 * g["uniform_expectation"] and g["min"] <= g["median"]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "build_data.py"), "inspect", grouped,
         "--augment", "on_the_fly"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "data.augment" in bad.stderr and "materialised" in bad.stderr


def test_sampler_on_s3_reads_what_local_reads(s3_env, odd, tmp_path):
    uri = f"s3://{s3_env.bucket}/odd"
    build_sudoku(uri, size=4, num_train=301, num_test=20, seed=0, min_clues=10,
                 rows_per_shard=100, row_group_rows=32)  # fmt: skip
    assert sampler_report(uri, batch_size=24, world_size=3) == {
        **sampler_report(odd, batch_size=24, world_size=3),
        "uri": uri,
    }
    kw = dict(batch_size=8, rank=2, world_size=3, seed=3, epoch=2, augment="fixed_pool", num_aug=5)
    for a, b in zip(ShardStream(uri, **kw), ShardStream(odd, **kw), strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------- augmentation regimes


def _by_row(uri, epochs, **kw):
    out = {}
    for epoch in range(epochs):
        for b in ShardStream(uri, batch_size=7, epoch=epoch, with_index=True, **kw):
            for i, ix in enumerate(b["index"]):
                out.setdefault(int(ix), []).append(b["inputs"][i].tobytes())
    return out


def test_fixed_pool_is_bounded_deterministic_and_the_materialised_pool(odd, tmp_path):
    pool = _by_row(odd, 12, augment="fixed_pool", num_aug=2, seed=1)
    assert pool == _by_row(odd, 12, augment="fixed_pool", num_aug=2, seed=1)
    assert max(len(set(v)) for v in pool.values()) <= 3  # original + num_aug variants
    assert np.mean([len(set(v)) for v in pool.values()]) > 2.5
    plain = _by_row(odd, 1, augment="none")
    assert np.mean([plain[r][0] in pool[r] for r in pool]) > 0.9  # variant 0: the original
    fresh = _by_row(odd, 12, augment="on_the_fly", seed=1)
    assert np.mean([len(set(v)) for v in fresh.values()]) > 8  # on the fly: a new one each epoch
    # the same puzzles built with 2 materialised copies store exactly this pool
    mat = str(tmp_path / "mat")
    build_sudoku(mat, size=4, num_train=301, num_test=20, seed=0, min_clues=10, num_aug=2)
    meta = read_meta(mat)
    g = Groups.from_columns(np.arange(meta.splits["train"].num_rows) % 301)
    stored = {}
    for b in ShardStream(mat, batch_size=301, shuffle=False, augment="none", with_index=True):
        for i, ix in enumerate(b["index"]):
            stored.setdefault(int(g.key[ix]), set()).add(b["inputs"][i].tobytes())
    assert all(set(pool[r]) <= stored[r] and plain[r][0] in stored[r] for r in pool)


def test_none_is_identity_and_fixed_pool_keeps_puzzles_valid(odd):
    store = {}
    for b in ShardStream(odd, batch_size=7, shuffle=False, augment="none", with_index=True):
        for i, ix in enumerate(b["index"]):
            store[int(ix)] = (b["inputs"][i], b["labels"][i])
    for b in ShardStream(odd, batch_size=7, augment="none", with_index=True, seed=3, epoch=1):
        for i, ix in enumerate(b["index"]):
            np.testing.assert_array_equal(b["inputs"][i], store[int(ix)][0])
    for b in ShardStream(odd, batch_size=50, augment="fixed_pool", num_aug=9, epoch=3):
        for x, y in zip(b["inputs"], b["labels"]):
            q, a = S.decode(x), S.decode(y)
            assert S.is_solution(a, 4) and all(int(u) in (0, int(v)) for u, v in zip(q, a))


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"augment": "sometimes"}, "data.augment: must be one of"),
        ({"augment": True}, "true/false were the old values"),
        ({"augment": "fixed_pool", "num_aug": 0}, "data.num_aug: must be an integer >= 1"),
    ],
)
def test_bad_regimes_are_config_errors(data, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        RunConfig.from_dict({"data": {"uri": "x", **data}})


def test_regime_that_the_dataset_cannot_run_is_a_config_error(odd, grouped):
    def cfg(uri, **data):
        return RunConfig.from_dict({"data": {"uri": uri, **data}}).data

    check_data_against(cfg(grouped, augment="fixed_pool", num_aug=4), read_meta(grouped))
    with pytest.raises(ConfigError, match=r"data.augment: on_the_fly: the dataset stores 4"):
        check_data_against(cfg(grouped, augment="on_the_fly"), read_meta(grouped))
    with pytest.raises(ConfigError, match=r"data.num_aug: 5 exceeds the 4 variants"):
        check_data_against(cfg(grouped, augment="fixed_pool", num_aug=5), read_meta(grouped))
    plain = read_meta(odd).model_copy(update={"augmentation": {"mode": "none"}})
    with pytest.raises(ConfigError, match=r"data.augment: fixed_pool: the sudoku dataset has no"):
        check_data_against(cfg(odd, augment="fixed_pool"), plain)
    check_data_against(cfg(odd, augment="none"), plain)


def test_arc_fixed_pool_one_variant_per_task_per_epoch(tmp_path):
    from pipeline.data import build_arc
    from pipeline.data.arc import read_pools

    rng = np.random.default_rng(0)
    for t in range(12):
        pairs = []
        for _ in range(3):
            g = rng.integers(0, 10, tuple(int(v) for v in rng.integers(1, 6, 2)))
            pairs.append({"input": g.tolist(), "output": np.rot90(g).tolist()})
        folder = tmp_path / "src" / "training"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"t{t:02d}.json").write_text(json.dumps({"train": pairs[:2], "test": pairs[2:]}))
    uri = str(tmp_path / "arc")
    meta = build_arc(uri, source=f"tasks:{tmp_path / 'src'}", num_aug=10, seed=3)
    kw = dict(batch_size=8, augment="fixed_pool", num_aug=10, seed=1, with_index=True)
    pools = read_pools(uri, meta)
    per_pass = {}
    for epoch in range(4):
        stream = ShardStream(uri, epoch=epoch, **kw)
        passes = stream.batch_rows()[1].reshape(-1)
        pids = np.concatenate([b["puzzle_identifiers"] for b in stream])
        for pid, ep in zip(pids, passes, strict=True):
            base, k = (int(v) for v in pools.split(pid))
            per_pass.setdefault((int(ep), base), set()).add(k)
    assert max(len(v) for v in per_pass.values()) == 1  # every example of a task: one variant
    assert len({next(iter(v)) for (e, b), v in per_pass.items() if b == 0}) > 1
    assert meta.num_puzzle_identifiers == 1 + 12 * 11
    with pytest.raises(ValueError, match=r"data\.num_aug: 11 exceeds the dataset's num_aug 10"):
        ShardStream(uri, augment="fixed_pool", num_aug=11)

"""ShardStream on local disk: partitioning across ranks, determinism, resume, augmentation."""

import numpy as np
import pytest

from pipeline.data import DatasetError, ShardStream, build_sudoku, read_meta
from trm.puzzles import sudoku as S


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    """500 training rows in 4 shards of 2 row groups each (many unit boundaries)."""
    uri = str(tmp_path_factory.mktemp("data") / "sudoku4")
    build_sudoku(uri, size=4, num_train=500, num_test=50, seed=0, rows_per_shard=128,
                 row_group_rows=64)  # fmt: skip
    return uri


def _rows(uri, **kw):
    batches = list(ShardStream(uri, with_index=True, **kw))
    return batches, np.concatenate([b["index"] for b in batches]) if batches else np.zeros(0)


def test_meta_describes_the_dataset(sudoku4):
    m = read_meta(sudoku4)
    assert (m.task, m.seq_len, m.vocab_size, m.pad_id, m.ignore_label_id) == ("sudoku", 16, 6, 0, 0)
    assert m.num_puzzle_identifiers == 1 and m.augmentation["mode"] == "on_the_fly"
    tr = m.splits["train"]
    assert tr.num_rows == 500 and len(tr.shards) == 4 and tr.shards[0].row_groups == [64, 64]
    assert m.splits["test"].num_rows == 50
    assert m.generator["params"]["size"] == 4 and m.generator["seed"] == 0


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_ranks_get_disjoint_rows_and_equal_batches(sudoku4, world):
    B = 16
    seen, lens = [], set()
    for r in range(world):
        kw = dict(batch_size=B, rank=r, world_size=world, seed=3, epoch=0, augment=False)
        batches, idx = _rows(sudoku4, **kw)
        rows, epochs = ShardStream(sudoku4, **kw).batch_rows()
        np.testing.assert_array_equal(rows.reshape(-1), idx)
        assert all(b["inputs"].shape == (B, 16) and b["inputs"].dtype == np.int64 for b in batches)
        lens.add(len(batches))
        seen.append(idx[epochs.reshape(-1) == 0])  # others: the head of epoch 1's permutation
    # epoch 0 is the global batches starting in its permutation: ceil(500 / (world * B))
    assert len(lens) == 1 and lens.pop() == -(-500 // (world * B))
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(500))


@pytest.mark.parametrize("world", [1, 3])
def test_no_drop_last_covers_every_row_once_with_padding(sudoku4, world):
    B = 32
    seen, lens = [], set()
    for r in range(world):
        batches, idx = _rows(sudoku4, split="train", batch_size=B, rank=r, world_size=world,
                             shuffle=False, augment=False, drop_last=False)  # fmt: skip
        lens.add(len(batches))
        for b in batches:
            pad = b["index"] < 0
            assert (b["labels"][pad] == -100).all() and (b["puzzle_identifiers"][pad] == 0).all()
            assert (b["labels"][~pad] >= 2).all()  # sudoku labels are all digits: none ignored
        seen.append(idx[idx >= 0])
    assert len(lens) == 1
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(500))
    if world == 1:  # unshuffled single rank reads in storage order
        np.testing.assert_array_equal(seen[0], np.arange(500))


def test_deterministic_and_epoch_dependent(sudoku4):
    kw = dict(batch_size=16, rank=1, world_size=2, seed=5)
    a = _rows(sudoku4, epoch=0, **kw)[1]
    b = _rows(sudoku4, epoch=0, **kw)[1]
    c = _rows(sudoku4, epoch=1, **kw)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, np.sort(a))  # shuffled


def test_start_batch_resumes_mid_epoch(sudoku4):
    kw = dict(batch_size=8, rank=0, world_size=2, seed=2, epoch=3, window_rows=40)
    full = list(ShardStream(sudoku4, **kw))
    tail = list(ShardStream(sudoku4, start_batch=7, **kw))
    assert len(tail) == len(full) - 7 == len(ShardStream(sudoku4, start_batch=7, **kw))
    for f, t in zip(full[7:], tail):
        for k in f:
            np.testing.assert_array_equal(f[k], t[k])
    with pytest.raises(ValueError, match="start_batch"):
        ShardStream(sudoku4, start_batch=10_000, **kw)


def test_augmentation_is_valid_and_independent_of_world_size(sudoku4):
    by_world = {}
    for world in (1, 2):
        rows = {}
        for r in range(world):
            for b in ShardStream(sudoku4, batch_size=10, rank=r, world_size=world, seed=9,
                                 epoch=4, with_index=True):  # fmt: skip
                for i, ix in enumerate(b["index"]):
                    rows[int(ix)] = (b["inputs"][i], b["labels"][i])
        by_world[world] = rows
    common = set(by_world[1]) & set(by_world[2])
    assert len(common) > 200
    plain = {}
    for b in ShardStream(sudoku4, batch_size=10, shuffle=False, augment=False, with_index=True):
        for i, ix in enumerate(b["index"]):
            plain[int(ix)] = b["inputs"][i]
    changed = 0
    for ix in sorted(common)[:100]:
        x1, y1 = by_world[1][ix]
        np.testing.assert_array_equal(x1, by_world[2][ix][0])
        q, a = S.decode(x1), S.decode(y1)
        assert S.is_solution(a, 4) and all(int(u) in (0, int(v)) for u, v in zip(q, a))
        assert S.solve(list(q), 4).unique
        changed += not np.array_equal(x1, plain[ix])
    assert changed > 50


def test_bad_arguments(sudoku4, tmp_path):
    with pytest.raises(ValueError, match="rank"):
        ShardStream(sudoku4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShardStream(sudoku4, batch_size=0)
    with pytest.raises(DatasetError, match="split 'valid'"):
        ShardStream(sudoku4, split="valid")
    with pytest.raises(DatasetError, match=r"no dataset at .*meta.json not found"):
        read_meta(str(tmp_path / "nothing"))


def test_prefetch_thread_gives_the_same_batches_and_stops_early(sudoku4):
    import threading

    kw = dict(batch_size=16, rank=0, world_size=1, seed=8, epoch=2)
    plain = list(ShardStream(sudoku4, prefetch=0, **kw))
    ahead = list(ShardStream(sudoku4, prefetch=3, **kw))
    assert len(plain) == len(ahead) == 31
    for a, b in zip(plain, ahead):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    it = iter(ShardStream(sudoku4, prefetch=2, **kw))
    next(it)
    it.close()  # a consumer that stops early leaves no thread behind
    assert not [t for t in threading.enumerate() if t.name == "ShardStream-prefetch"]

"""ARC-AGI: 30x30 canvas encoding, exact decoding, and augmentation variants with enumerable ids.

Encoding (official `np_grid_to_seq_translational_augment`): PAD 0, EOS 1, colour c -> c + 2
(vocab 12), a grid of h x w <= 30 x 30 placed at (r, c) in a 30x30 canvas, an EOS row under it
(columns c..c+w-1) and an EOS column right of it (rows r..r+h-1) where they fit, seq_len 900.
Input and output of a pair share the offset. Labels' PAD is ignored in the loss; EOS is scored.

Augmentation (official `aug`): a dihedral transform (`trm.puzzles.maze.dihedral_one`, same tid
numbering) after a colour permutation that keeps 0 fixed, plus a translation of the pair. In the
official data every distinct (task, transform, colours) variant has its own puzzle identifier;
here variant draw k of task b (k = 0 is the original) has a transform that is a pure function
of (aug_seed, b, k); a task's pool (`Pools`) lists the draws of its distinct variants, as the
official builder keeps them, and pool index j of task b has identifier

    id = 1 + (pool sizes of tasks 0..b-1) + j        (0 = blank)

the official builder's sequential numbering, so there are 1 + (sum of pool sizes) identifiers,
one per distinct variant, and an evaluator can undo the augmentation of any prediction from its
identifier (`Pools.split`, `Pools.transform`, `inverse`) without any variant materialised.
"""

from __future__ import annotations

import numpy as np

from trm.puzzles.maze import INVERSE, dihedral_one
from trm.puzzles.rng import example_keys, random_ints, random_permutations

SIDE = 30
PAD, EOS = 0, 1
VOCAB_SIZE = 12
SEQ_LEN = SIDE * SIDE


def check_grid(grid) -> np.ndarray:
    """A list-of-lists or array grid -> uint8 [h, w]; ValueError says what is wrong."""
    if not isinstance(grid, np.ndarray):
        if not isinstance(grid, list) or not grid or not all(isinstance(r, list) for r in grid):
            raise ValueError("a grid must be a non-empty list of rows (lists of colours)")
        widths = {len(r) for r in grid}
        if len(widths) != 1:
            raise ValueError(
                f"rows of a grid must have equal lengths, got lengths {sorted(widths)}"
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) for r in grid for v in r):
            raise ValueError("grid cells must be integers 0..9")
    a = np.asarray(grid)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"a grid must be 2-D and non-empty, got shape {a.shape}")
    if a.shape[0] > SIDE or a.shape[1] > SIDE:
        raise ValueError(f"grid {a.shape[0]}x{a.shape[1]} exceeds {SIDE}x{SIDE}")
    if a.min() < 0 or a.max() > 9:
        raise ValueError(f"grid colours must be 0..9, got {a.min()}..{a.max()}")
    return a.astype(np.uint8)


def encode(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Colour grid [h, w] -> uint8 [900] canvas at `offset` with the EOS border."""
    h, w = grid.shape
    r, c = offset
    if not (0 <= r <= SIDE - h and 0 <= c <= SIDE - w):
        raise ValueError(f"offset {offset} does not fit a {h}x{w} grid in {SIDE}x{SIDE}")
    canvas = np.zeros((SIDE, SIDE), dtype=np.uint8)
    canvas[r : r + h, c : c + w] = grid + 2
    if r + h < SIDE:
        canvas[r + h, c : c + w] = EOS
    if c + w < SIDE:
        canvas[r : r + h, c + w] = EOS
    return canvas.reshape(-1)


def crop_shapes(seq_BL) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths [B] of `crop` for canvases [B, 900], vectorised.

    With r + 1 rows the usable width is the shortest leading run of colour tokens among those
    rows; the crop is the first (rows, width) of largest area, (0, 0) if every area is 0.
    """
    g = np.asarray(seq_BL).reshape(-1, SIDE, SIDE)
    colour = (g >= 2) & (g <= 11)
    run_BR = np.where(colour.all(2), SIDE, colour.argmin(2))  # leading colour run of each row
    width_BR = np.minimum.accumulate(run_BR, axis=1)
    area_BR = width_BR * np.arange(1, SIDE + 1)
    r_B = area_BR.argmax(1)
    found = area_BR.max(1) > 0
    return np.where(found, r_B + 1, 0), np.where(found, width_BR[np.arange(len(g)), r_B], 0)


def crop(seq) -> np.ndarray:
    """Official `_crop`: the largest top-left rectangle of colour tokens, as colours 0..9.

    Used on predictions, which sit at offset (0, 0); an empty prediction gives a 0x0 grid.
    """
    return crop_all(np.asarray(seq)[None])[0]


def crop_all(seq_BL) -> list[np.ndarray]:
    """`crop` of each canvas [B, 900]."""
    g = np.asarray(seq_BL).reshape(-1, SIDE, SIDE)
    h, w = crop_shapes(g)
    return [(g[b, : h[b], : w[b]].astype(np.int16) - 2).astype(np.uint8) for b in range(len(g))]


def decode(seq) -> np.ndarray:
    """Exact inverse of `encode` at any offset: the grid [h, w] of colours 0..9."""
    g = np.asarray(seq).reshape(SIDE, SIDE)
    colour = g >= 2
    rows, cols = np.flatnonzero(colour.any(1)), np.flatnonzero(colour.any(0))
    if not len(rows):
        raise ValueError("canvas holds no grid (no colour tokens)")
    return crop(np.roll(g, (-rows[0], -cols[0]), axis=(0, 1)))


def variant(base, k, aug_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Transform of variant k of task `base` (arrays broadcast): (dihedral tid, colour map [.., 10]).

    k = 0 is the identity; other k draw a dihedral tid in 0..7 and a permutation of colours 1..9.
    """
    base, k = np.broadcast_arrays(np.asarray(base, np.int64), np.asarray(k, np.int64))
    keys = example_keys(aug_seed, base, k)
    tid = np.where(k == 0, 0, random_ints(keys, 8, stream=31))
    perm = random_permutations(keys, 9, stream=32) + 1
    perm = np.where((k == 0)[..., None], np.arange(1, 10), perm)
    cmap = np.concatenate([np.zeros((*k.shape, 1), np.int64), perm], axis=-1)
    return tid, cmap.astype(np.uint8)


def apply(grid: np.ndarray, tid: int, cmap: np.ndarray) -> np.ndarray:
    """Official order: colour map first, then the dihedral transform."""
    return np.ascontiguousarray(dihedral_one(cmap[grid], int(tid)))


def inverse(grid: np.ndarray, tid: int, cmap: np.ndarray) -> np.ndarray:
    """Undo `apply` (for evaluation: map a prediction back to the original task's frame)."""
    return np.argsort(cmap)[dihedral_one(grid, INVERSE[int(tid)])].astype(np.uint8)


def _shapes(c_BSS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths of grids placed at (0, 0): leading colour tokens down column 0 / along row 0."""
    colour = c_BSS >= 2
    h = np.cumprod(colour[:, :, 0], axis=1).sum(1)
    w = np.cumprod(colour[:, 0, :], axis=1).sum(1)
    return h, w


# Output cell (i, j) of dihedral(grid[h, w], tid) comes from row A0*i + A1*j + F0*(h-1) and
# column A2*i + A3*j + F1*(w-1) of the grid (matches `dihedral_one`; checked in the tests).
_COEF = np.array(
    [
        (1, 0, 0, 1, 0, 0),
        (0, 1, -1, 0, 0, 1),
        (-1, 0, 0, -1, 1, 1),
        (0, -1, 1, 0, 1, 0),
        (1, 0, 0, -1, 0, 1),
        (-1, 0, 0, 1, 1, 0),
        (0, 1, 1, 0, 0, 0),
        (0, -1, -1, 0, 1, 1),
    ],
    dtype=np.int32,
)


def transform_canvases(x, tid, cmap, offset) -> np.ndarray:
    """Vectorised `encode(apply(decode(x[b]), tid[b], cmap[b]), offset[b])` for canvases [B, 900]
    whose grids sit at (0, 0)."""
    B = len(x)
    c = np.asarray(x).reshape(B, SIDE, SIDE)
    h, w = (v.astype(np.int32) for v in _shapes(c))
    swap = np.isin(tid, (1, 3, 6, 7))
    h2, w2 = np.where(swap, w, h), np.where(swap, h, w)  # transformed shape
    r0, c0 = offset[:, 0], offset[:, 1]
    rows = np.arange(SIDE, dtype=np.int32)
    r_in = rows[None, :, None] - r0[:, None, None].astype(np.int32)  # row inside the placed grid
    c_in = rows[None, None, :] - c0[:, None, None].astype(np.int32)  # column inside it
    H2, W2 = h2[:, None, None], w2[:, None, None]
    inside = (r_in >= 0) & (r_in < H2) & (c_in >= 0) & (c_in < W2)
    k = _COEF[tid][:, :, None, None]  # [B, 6, 1, 1]
    src_r = k[:, 0] * r_in + k[:, 1] * c_in + k[:, 4] * (h[:, None, None] - 1)
    src_c = k[:, 2] * r_in + k[:, 3] * c_in + k[:, 5] * (w[:, None, None] - 1)
    flat = (np.clip(src_r, 0, SIDE - 1) * SIDE + np.clip(src_c, 0, SIDE - 1)).reshape(B, -1)
    colour = np.take_along_axis(c.reshape(B, -1), flat, 1).astype(np.int32) - 2
    mapped = np.take_along_axis(cmap.astype(np.int32), np.clip(colour, 0, 9), 1)
    out = np.where(inside, mapped.reshape(B, SIDE, SIDE) + 2, PAD)
    eos = ((r_in == H2) & (c_in >= 0) & (c_in < W2)) | ((c_in == W2) & (r_in >= 0) & (r_in < H2))
    out = np.where(eos, EOS, out)
    return out.reshape(B, -1).astype(np.asarray(x).dtype)


class Pools:
    """The variant pool of every task, as the official builder keeps it: per task b the draws
    k of its distinct variants (k = 0, the original, first; a draw that repeats an earlier
    variant's puzzle is skipped). Pool index j of task b is variant draw `draws[b][j]`
    (`variant(b, draws[b][j], aug_seed)`), with identifier `first[b] + j`: identifiers number
    the distinct variants in sequence, task by task, from 1 (0 is the blank identifier)."""

    def __init__(self, draws: list[list[int]]):
        self.sizes = np.array([len(d) for d in draws], np.int64)
        if (self.sizes < 1).any() or any(d[0] != 0 for d in draws if d):
            raise ValueError("every ARC task's pool must start with its original (draw 0)")
        self.table = np.full((len(draws), max(self.sizes, default=1)), -1, np.int64)
        for b, d in enumerate(draws):
            self.table[b, : len(d)] = d
        self.first = 1 + np.cumsum(self.sizes) - self.sizes
        """int64 [T]: identifier of each task's original (pool index 0)."""

    @property
    def num_identifiers(self) -> int:
        """Identifiers in all, the blank one included: 1 + every task's distinct variants."""
        return 1 + int(self.sizes.sum())

    def draw(self, base, j) -> np.ndarray:
        """Variant draw k of pool index j of task `base` (arrays broadcast)."""
        base, j = np.asarray(base, np.int64), np.asarray(j, np.int64)
        if (j >= self.sizes[base]).any() or (j < 0).any():
            raise ValueError("ARC pool index past the task's pool of distinct variants")
        return self.table[base, j]

    def identifier(self, base, j) -> np.ndarray:
        """Puzzle identifier of pool index j of task `base` (arrays broadcast)."""
        self.draw(base, j)  # checks j
        return self.first[np.asarray(base, np.int64)] + np.asarray(j, np.int64)

    def split(self, pid) -> tuple[np.ndarray, np.ndarray]:
        """Puzzle identifier -> (task index b, pool index j); inverse of `identifier`."""
        pid = np.asarray(pid, np.int64)
        if (pid < 1).any() or (pid >= self.num_identifiers).any():
            raise ValueError(
                f"ARC puzzle identifiers must be 1..{self.num_identifiers - 1} (the pools' "
                f"distinct variants), got {pid.min()}..{pid.max()}"
            )
        base = np.searchsorted(self.first, pid, side="right") - 1
        return base, pid - self.first[base]

    def transform(self, base, j, aug_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(dihedral tid, colour map) of pool index j of task `base`."""
        return variant(base, self.draw(base, j), aug_seed)


def _needed(x, y, tid) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns the transformed pair (input and output at one offset) occupies."""
    (hi, wi), (ho, wo) = _shapes(x.reshape(-1, SIDE, SIDE)), _shapes(y.reshape(-1, SIDE, SIDE))
    swap = np.isin(tid, (1, 3, 6, 7))
    rows = np.maximum(np.where(swap, wi, hi), np.where(swap, wo, ho))
    cols = np.maximum(np.where(swap, hi, wi), np.where(swap, ho, wo))
    return rows, cols


def official_offsets(aug_seed: int, base, k, example, count, rows, cols) -> np.ndarray:
    """int64 [B, 2] offsets of training examples as the official builder places them: per
    (task `base`, variant draw k) one of its `count` examples, chosen by (aug_seed, base, k),
    stays at the origin and every other example `example` gets a random offset keyed by
    (aug_seed, base, k, example) at which a pair of `rows` x `cols` fits."""
    base, k, example = (np.asarray(v, np.int64) for v in (base, k, example))
    keys = example_keys(aug_seed, base, example + k * 4096)
    keep = random_ints(example_keys(aug_seed, base, k), np.asarray(count), stream=35)
    r = random_ints(keys, SIDE - np.asarray(rows) + 1, stream=33)
    c = random_ints(keys, SIDE - np.asarray(cols) + 1, stream=34)
    at_origin = example == keep
    return np.stack([np.where(at_origin, 0, r), np.where(at_origin, 0, c)], -1).astype(np.int64)


def pool_variant(x, y, pid, j, example, count, pools: Pools, *, aug_seed: int,
                 translate: bool = True):  # fmt: skip
    """Pool index j of each row's task, placed as the official builder places that variant's
    training examples (`official_offsets`; `example` is the row's index among its task's
    `count` training examples). x, y, pid: original pairs at the origin with their tasks'
    original identifiers. Returns the canvases and the variants' identifiers. The one
    definition of a pool variant's rows: the materialised build stores what this returns and
    the on-the-fly fixed pool computes it per batch."""
    x, y, pid = np.asarray(x), np.asarray(y), np.asarray(pid)
    base = _original_base(pid, pools)
    k = pools.draw(base, j)
    tid, cmap = variant(base, k, aug_seed)
    offset = np.zeros((len(x), 2), np.int64)
    if translate:
        offset = official_offsets(aug_seed, base, k, example, count, *_needed(x, y, tid))
    return (
        transform_canvases(x, tid, cmap, offset),
        transform_canvases(y, tid, cmap, offset),
        pid + np.asarray(j, np.int64),
    )


def _original_base(pid: np.ndarray, pools: Pools) -> np.ndarray:
    base, j0 = pools.split(pid)
    if (j0 != 0).any():
        raise ValueError("ARC rows to augment must carry original (variant 0) identifiers")
    return base


def augment(x, y, pid, keys, pools: Pools, *, aug_seed: int, translate: bool = True):
    """A random variant of each row's task pool and a random translation, keyed by keys[b]
    (the on_the_fly regime: a fresh draw every epoch).

    x, y: token canvases [B, 900] of original pairs at offset (0, 0); pid: their identifiers
    (variant 0). Returns augmented canvases and the variants' identifiers.
    """
    x, y, pid = np.asarray(x), np.asarray(y), np.asarray(pid)
    keys = np.asarray(keys, dtype=np.uint64)
    base = _original_base(pid, pools)
    j = random_ints(keys, pools.sizes[base], stream=30)
    tid, cmap = pools.transform(base, j, aug_seed)
    offset = np.zeros((len(x), 2), np.int64)
    if translate:
        rows, cols = _needed(x, y, tid)
        offset[:, 0] = random_ints(keys, SIDE - rows + 1, stream=33)
        offset[:, 1] = random_ints(keys, SIDE - cols + 1, stream=34)
    return (
        transform_canvases(x, tid, cmap, offset),
        transform_canvases(y, tid, cmap, offset),
        pid + j,
    )

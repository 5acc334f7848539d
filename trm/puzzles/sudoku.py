"""Sudoku: token encoding, a bitmask solver that counts solutions, a generator, augmentations.

Encoding (identical to the official builder, so official checkpoints read our data): a board of side
n is n*n cells row-major; token 0 = PAD (never used inside a board), 1 = blank, digit d -> d + 1.
vocab_size = n + 2 (11 for 9x9), seq_len = n*n. Boxes are `box_rows x box_cols` (3x3, 2x3, 2x2).

Solver: candidates are bitmasks per cell; propagation applies naked singles (a cell with one
candidate removes it from its peers) and hidden singles (a digit with one place in a unit goes
there); search branches on the cell with fewest candidates. `solve(board, limit=2)` returns up to
`limit` solutions, so "unique" is `len(solutions) == 1`. The hardness rating is the number of
guesses (branchings) the solver makes to find the solution and prove it unique: 0 means the
puzzle yields to singles alone. It is a property of this solver (deterministic tie-breaking), in
the spirit of the backtrack counts that rate the public sudoku-extreme set, not the same number.

Generator: fill an empty board by randomised search, then remove clues in random order, keeping a
removal only if the solution stays unique (checked as "no solution differs at that cell"), down
to a minimal puzzle or a clue floor; puzzles below a minimum rating are discarded.

Augmentation (official `shuffle_sudoku`): digit permutation, transpose (square boxes only), a
permutation of bands and of rows inside each band, and the same for stacks/columns. The same map
is applied to question and answer, so a valid, uniquely solvable puzzle stays one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from trm.puzzles.rng import random_bits, random_permutations

PAD, BLANK = 0, 1


def box_shape(n: int) -> tuple[int, int]:
    """(box_rows, box_cols) for a board of side n: the most square factorisation, rows <= cols."""
    if n < 4:
        raise ValueError(f"sudoku size must be at least 4, got {n}")
    r = max((d for d in range(2, math.isqrt(n) + 1) if n % d == 0), default=0)
    if r == 0:
        raise ValueError(f"sudoku size {n} has no box shape (needs n = rows * cols with rows >= 2)")
    return r, n // r


@dataclass(frozen=True)
class Geometry:
    """Cells, units and peers of an n x n board; built once per size."""

    n: int
    box_rows: int
    box_cols: int
    units: tuple[tuple[int, ...], ...]
    peers: tuple[tuple[int, ...], ...]

    @property
    def cells(self) -> int:
        return self.n * self.n

    @property
    def vocab_size(self) -> int:
        return self.n + 2


_GEOMETRY: dict[int, Geometry] = {}


def geometry(n: int) -> Geometry:
    if n not in _GEOMETRY:
        br, bc = box_shape(n)
        rows = [tuple(r * n + c for c in range(n)) for r in range(n)]
        cols = [tuple(r * n + c for r in range(n)) for c in range(n)]
        boxes = [
            tuple((R + r) * n + C + c for r in range(br) for c in range(bc))
            for R in range(0, n, br)
            for C in range(0, n, bc)
        ]
        units = tuple(rows + cols + boxes)
        peers = tuple(
            tuple(sorted({p for u in units if cell in u for p in u} - {cell}))
            for cell in range(n * n)
        )
        _GEOMETRY[n] = Geometry(n, br, bc, units, peers)
    return _GEOMETRY[n]


# --------------------------------------------------------------------------- solver


class Contradiction(Exception):
    """Internal: the candidate state has no solution."""


def _fix(cand: list[int], todo: list[int], g: Geometry) -> None:
    """Propagate naked and hidden singles to a fixed point. `todo`: cells newly reduced to one."""
    peers, units = g.peers, g.units
    full = (1 << g.n) - 1
    while True:
        while todo:
            c = todo.pop()
            b = cand[c]
            for p in peers[c]:
                m = cand[p]
                if m & b:
                    m ^= b
                    if not m:
                        raise Contradiction
                    cand[p] = m
                    if not m & (m - 1):
                        todo.append(p)
        for u in units:
            once = twice = placed = 0
            for c in u:
                m = cand[c]
                twice |= once & m
                once |= m
                if not m & (m - 1):
                    placed |= m
            if once != full:
                raise Contradiction
            hidden = once & ~twice & ~placed  # digits with one place, not yet placed there
            while hidden:
                b = hidden & -hidden
                hidden ^= b
                for c in u:
                    if cand[c] & b:
                        if cand[c] != b:
                            cand[c] = b
                            todo.append(c)
                        break
        if not todo:
            return


def _candidates(board, g: Geometry) -> list[int]:
    """Initial candidate masks; raises Contradiction for clashing clues."""
    full = (1 << g.n) - 1
    cand = [full] * g.cells
    todo = []
    for c, v in enumerate(board):
        v = int(v)
        if v:
            if not 1 <= v <= g.n:
                raise ValueError(f"cell {c} holds {v}; digits must be 1..{g.n} (0 = blank)")
            cand[c] = 1 << (v - 1)
            todo.append(c)
    _fix(cand, todo, g)
    return cand


def _search(cand, g, limit, out, stats, order=None) -> None:
    best, best_count = -1, 99
    for c, m in enumerate(cand):
        if m & (m - 1):
            k = m.bit_count()
            if k < best_count:
                best, best_count = c, k
                if k == 2:
                    break
    if best < 0:
        out.append(cand)
        return
    stats[0] += 1  # one guess: a branching on `best`
    m = cand[best]
    bits = [1 << i for i in range(g.n) if m >> i & 1]
    if order is not None:
        bits = [bits[i] for i in order.permutation(len(bits))]
    for b in bits:
        new = cand[:]
        new[best] = b
        try:
            _fix(new, [best], g)
        except Contradiction:
            continue
        _search(new, g, limit, out, stats, order)
        if len(out) >= limit:
            return


def _decode(cand) -> list[int]:
    return [m.bit_length() for m in cand]


@dataclass
class SolveResult:
    solutions: list[list[int]]  # up to `limit` solutions, each n*n digits
    guesses: int  # branchings needed (the hardness rating when limit=2)

    @property
    def unique(self) -> bool:
        return len(self.solutions) == 1


def solve(board, n: int = 9, limit: int = 2) -> SolveResult:
    """Solutions of `board` (n*n ints, 0 = blank), at most `limit` of them, and the guess count."""
    g = geometry(n)
    if len(board) != g.cells:
        raise ValueError(f"a {n}x{n} board has {g.cells} cells, got {len(board)}")
    out: list[list[int]] = []
    stats = [0]
    try:
        cand = _candidates(board, g)
    except Contradiction:
        return SolveResult([], 0)
    _search(cand, g, limit, out, stats)
    return SolveResult([_decode(c) for c in out], stats[0])


def rating(board, n: int = 9) -> int:
    """Hardness: guesses to solve and prove uniqueness (raises if not uniquely solvable)."""
    res = solve(board, n, limit=2)
    if not res.unique:
        raise ValueError(f"puzzle has {len(res.solutions)} solution(s) (need exactly 1)")
    return res.guesses


def is_solution(board, n: int = 9) -> bool:
    """True if `board` is a completely and correctly filled n x n grid."""
    g = geometry(n)
    b = list(board)
    if len(b) != g.cells:
        return False
    want = set(range(1, n + 1))
    return all({b[c] for c in u} == want for u in g.units)


def _differs_somewhere(puzzle, cell, value_bit, g) -> bool:
    """Is there a solution of `puzzle` (digits, `cell` blank) whose `cell` is not `value_bit`?

    One propagation from the raw clues with the cell's value excluded: this is the inner loop of
    the generator, so the clue state is not propagated separately first.
    """
    full = (1 << g.n) - 1
    cand = [full] * g.cells
    todo = []
    for c, v in enumerate(puzzle):
        if v:
            cand[c] = 1 << (v - 1)
            todo.append(c)
    m = full & ~value_bit
    cand[cell] = m
    if not m & (m - 1):
        todo.append(cell)
    try:
        _fix(cand, todo, g)
    except Contradiction:
        return False
    out: list = []
    _search(cand, g, 1, out, [0])
    return bool(out)


def generate(
    rng: np.random.Generator, n: int = 9, min_clues: int = 0, min_rating: int = 0, max_tries=1000
) -> tuple[list[int], list[int], int]:
    """One puzzle with a unique solution: (question, solution, rating), digits 0..n (0 = blank).

    Clues are removed in random order while the solution stays unique; digging stops at
    `min_clues` (more clues = easier) or at a minimal puzzle. Puzzles rated below `min_rating`
    are discarded and a new one is drawn (up to `max_tries`, then ValueError).
    """
    g = geometry(n)
    if not 0 <= min_clues <= g.cells:
        raise ValueError(f"min_clues must be in 0..{g.cells}, got {min_clues}")
    for _ in range(max_tries):
        out: list = []
        _search(_candidates([0] * g.cells, g), g, 1, out, [0], order=rng)
        solution = _decode(out[0])
        puzzle = list(solution)
        clues = g.cells
        for cell in rng.permutation(g.cells):
            if clues <= min_clues:
                break
            cell = int(cell)
            v = puzzle[cell]
            puzzle[cell] = 0
            if _differs_somewhere(puzzle, cell, 1 << (v - 1), g):
                puzzle[cell] = v
            else:
                clues -= 1
        r = rating(puzzle, n)
        if r >= min_rating:
            return puzzle, solution, r
    raise ValueError(
        f"no {n}x{n} puzzle with rating >= {min_rating} in {max_tries} tries; lower min_rating"
    )


# --------------------------------------------------------------------------- encoding


def parse_board(text: str, n: int = 9, blank: str = ".0") -> np.ndarray:
    """'..3.1..' style string (row-major, `blank` chars = empty) -> int8 digits [n*n], 0 = blank."""
    if len(text) != n * n:
        raise ValueError(f"expected {n * n} characters for a {n}x{n} board, got {len(text)}")
    out = np.zeros(n * n, dtype=np.int8)
    for i, ch in enumerate(text):
        if ch in blank:
            continue
        if not ch.isdigit() or not 1 <= int(ch) <= n:
            raise ValueError(f"character {ch!r} at position {i} is not a digit 1..{n} or blank")
        out[i] = int(ch)
    return out


def format_board(board, n: int = 9) -> str:
    return "".join("." if int(v) == 0 else str(int(v)) for v in board)


def encode(board) -> np.ndarray:
    """Digits 0..n (0 = blank) -> tokens (blank 1, digit d -> d + 1)."""
    return np.asarray(board, dtype=np.int16).astype(np.uint8) + 1


def decode(tokens) -> np.ndarray:
    """Tokens -> digits 0..n (PAD and blank both -> 0)."""
    t = np.asarray(tokens).astype(np.int16)
    return np.where(t <= BLANK, 0, t - 1).astype(np.int8)


# --------------------------------------------------------------------------- augmentation


def augment(inputs, labels, keys, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Apply a random symmetry per row to token arrays [B, n*n]; row b's map is a function of keys[b].

    Question and answer of a row get the same map. Returns new arrays of the input dtype.
    """
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    g = geometry(n)
    B = inputs.shape[0]
    if inputs.shape != (B, g.cells) or labels.shape != (B, g.cells):
        raise ValueError(
            f"expected [B, {g.cells}] token arrays, got {inputs.shape}, {labels.shape}"
        )
    keys = np.asarray(keys, dtype=np.uint64)
    br, bc = g.box_rows, g.box_cols
    # Token map: PAD and blank fixed, digits permuted.
    digit = random_permutations(keys, n, stream=0) + 2
    tmap = np.concatenate([np.broadcast_to([PAD, BLANK], (B, 2)), digit], axis=1)
    # Rows: permute the bands (groups of box_rows rows), then rows inside each band.
    bands = random_permutations(keys, n // br, stream=1)
    inner = random_permutations(keys[:, None] + np.arange(n // br, dtype=np.uint64), br, stream=2)
    rows = (bands[:, :, None] * br + np.take_along_axis(inner, bands[:, :, None], 1)).reshape(B, n)
    stacks = random_permutations(keys, n // bc, stream=3)
    inner = random_permutations(keys[:, None] + np.arange(n // bc, dtype=np.uint64), bc, stream=4)
    cols = (stacks[:, :, None] * bc + np.take_along_axis(inner, stacks[:, :, None], 1)).reshape(
        B, n
    )
    # Transposing swaps box rows and columns, a symmetry only when boxes are square.
    flip = (random_bits(keys, 1, stream=5)[:, 0] & np.uint64(1)).astype(bool) & (br == bc)
    b_idx = np.arange(B)[:, None, None]

    def apply(x):
        grid = x.reshape(B, n, n)
        grid = np.where(flip[:, None, None], grid.transpose(0, 2, 1), grid)
        grid = grid[b_idx, rows[:, :, None], cols[:, None, :]]
        return np.take_along_axis(tmap, grid.reshape(B, -1).astype(np.int64), 1).astype(x.dtype)

    return apply(inputs), apply(labels)


# ---------------------------------------------------------------------------- symmetry classes
MAX_CLASS_PERMUTATIONS = 5000
"""Sizes whose cell symmetries number more than this (9x9: 3.4 million) get no class key."""


def _line_orders(groups: int, size: int) -> list[list[int]]:
    """Every order of `groups` groups of `size` lines: groups permuted, lines inside each."""
    import itertools

    inner = list(itertools.permutations(range(size)))
    return [
        [g * size + within[g][i] for g in order for i in range(size)]
        for order in itertools.permutations(range(groups))
        for within in itertools.product(inner, repeat=groups)
    ]


@functools.cache
def cell_symmetries(n: int) -> np.ndarray | None:
    """[P, n*n] cell index maps of every symmetry `augment` draws from (band, row-in-band, stack,
    column-in-stack orders; the transpose when boxes are square), or None when there are more
    than MAX_CLASS_PERMUTATIONS. Built once per size (read-only)."""
    g = geometry(n)
    rows, cols = n // g.box_rows, n // g.box_cols
    count = (
        (2 if g.box_rows == g.box_cols else 1)
        * math.factorial(rows) * math.factorial(g.box_rows) ** rows
        * math.factorial(cols) * math.factorial(g.box_cols) ** cols
    )  # fmt: skip
    if count > MAX_CLASS_PERMUTATIONS:
        return None
    idx = np.arange(g.cells).reshape(n, n)
    maps = []
    for grid in (idx, idx.T) if g.box_rows == g.box_cols else (idx,):
        for r in _line_orders(rows, g.box_rows):
            for c in _line_orders(cols, g.box_cols):
                maps.append(grid[np.ix_(r, c)].ravel())
    out = np.array(maps)
    out.flags.writeable = False  # shared by every caller through the cache
    return out


def symmetry_class(puzzles: np.ndarray, n: int) -> list[bytes] | None:
    """A key per puzzle ([N, n*n] digits, 0 = blank) equal for two puzzles exactly when one is
    a symmetry of the other that `augment` can draw (cell symmetries and digit relabelling):
    the smallest of its images with digits renumbered in order of first appearance. None for
    sizes with too many symmetries to enumerate (9x9), where two random puzzles being
    equivalent is vanishingly unlikely."""
    maps = cell_symmetries(n)
    if maps is None:
        return None
    puzzles = np.asarray(puzzles)
    keys: list[bytes] = []
    for start in range(0, len(puzzles), 64):
        v = puzzles[start : start + 64][:, maps].reshape(-1, maps.shape[1])  # [B*P, cells]
        # first position of each digit; digits renumbered 1.. in that order (absent ones last)
        first = np.stack(
            [np.where((v == d).any(1), (v == d).argmax(1), v.shape[1]) for d in range(1, n + 1)],
            axis=1,
        )
        label = np.zeros((len(v), n + 1), np.int64)
        np.put_along_axis(label, np.argsort(first, axis=1, kind="stable") + 1,
                          np.arange(1, n + 1)[None, :], axis=1)  # fmt: skip
        images = np.take_along_axis(label, v.astype(np.int64), axis=1)
        # +1: no NUL bytes, which fixed-width bytes would drop
        as_bytes = (images + 1).astype(np.uint8).view(f"S{v.shape[1]}").reshape(-1, len(maps))
        keys.extend(bytes(k) for k in np.sort(as_bytes, axis=1)[:, 0])
    return keys

"""Maze: text/token encoding, BFS shortest paths, a Maze-Hard style generator, dihedral augmentation.

Encoding (official builder): a square grid of characters from `CHARSET = "# SGo"` (wall, open,
start, goal, path), row-major; token = index in CHARSET + 1, PAD = 0; vocab_size 6, seq_len 900 for
30x30. The answer is the question with the cells of a shortest start->goal path (S and G excluded)
marked `o`; every cell is scored.

Generator (after the HRM paper's Maze-Hard description of the Searchformer instance generator):
walls on a uniformly drawn 30-50% of cells, a random open start, BFS distances from it, a goal
drawn among open cells more than `min_path` moves away (Maze-Hard: longer than 110); grids where
no such goal exists are redrawn. Drawing the goal among the far cells rather than rejecting
uniform (start, goal) pairs is much faster and gives the same kind of instance; the exact
Maze-Hard filter semantics could not be checked offline (docs/datasets.md, Maze-Hard).
Such mazes usually have several shortest paths; the label is the one that, walking from S, always
takes the first neighbour in (up, down, left, right) order that gets one step closer to G.
`is_shortest_path` accepts any of them (for "any shortest path" accuracy).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from trm.puzzles.rng import random_ints

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = (CHARSET.index(c) + 1 for c in CHARSET)
VOCAB_SIZE = len(CHARSET) + 1


def encode(text: str) -> np.ndarray:
    """Maze text (row-major, CHARSET characters) -> uint8 tokens."""
    lut = np.zeros(256, dtype=np.uint8)
    for i, c in enumerate(CHARSET):
        lut[ord(c)] = i + 1
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    tokens = lut[raw]
    if len(raw) != len(text) or (tokens == 0).any():
        bad = next(i for i, c in enumerate(text) if c not in CHARSET)
        raise ValueError(f"character {text[bad]!r} at position {bad} is not one of {CHARSET!r}")
    return tokens


def decode(tokens) -> str:
    t = np.asarray(tokens)
    if t.min() < 1 or t.max() > len(CHARSET):
        raise ValueError(f"maze tokens must be 1..{len(CHARSET)}, got {t.min()}..{t.max()}")
    return "".join(CHARSET[v - 1] for v in t.tolist())


def side_of(length: int) -> int:
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"a maze must be square; {length} cells is not a square number")
    return side


def _neighbours(cell: int, side: int):
    r, c = divmod(cell, side)
    if r > 0:
        yield cell - side
    if r < side - 1:
        yield cell + side
    if c > 0:
        yield cell - 1
    if c < side - 1:
        yield cell + 1


def distances(open_cells: np.ndarray, src: int) -> np.ndarray:
    """BFS moves from `src` to every cell over `open_cells` (flat bool [side*side]); -1 = unreachable."""
    side = side_of(len(open_cells))
    dist = np.full(len(open_cells), -1, dtype=np.int32)
    dist[src] = 0
    free = open_cells.tolist()
    d = dist.tolist()
    q = deque([src])
    while q:
        u = q.popleft()
        for v in _neighbours(u, side):
            if free[v] and d[v] < 0:
                d[v] = d[u] + 1
                q.append(v)
    return np.array(d, dtype=np.int32)


def _parts(tokens: np.ndarray):
    t = np.asarray(tokens)
    starts, goals = np.flatnonzero(t == START), np.flatnonzero(t == GOAL)
    if len(starts) != 1 or len(goals) != 1:
        raise ValueError(
            f"a maze needs exactly one S and one G, got {len(starts)} and {len(goals)}"
        )
    return t != WALL, int(starts[0]), int(goals[0])


def solve(question) -> tuple[np.ndarray, int]:
    """Question tokens -> (answer tokens with the canonical shortest path, path length in moves).

    Raises ValueError if G cannot be reached from S.
    """
    q = np.asarray(question).astype(np.uint8)
    free, s, g = _parts(q)
    if (q == PATH).any():
        raise ValueError("a question must not contain path marks 'o'")
    dist = distances(free, g)
    if dist[s] < 0:
        raise ValueError("the goal G cannot be reached from the start S")
    side = side_of(len(q))
    ans = q.copy()
    u = s
    while dist[u] > 1:
        u = next(v for v in _neighbours(u, side) if dist[v] == dist[u] - 1)
        ans[u] = PATH
    return ans, int(dist[s])


def is_shortest_path(question, answer) -> bool:
    """Does `answer` mark, on top of `question`, exactly one shortest S->G path?"""
    q, a = np.asarray(question), np.asarray(answer)
    if q.shape != a.shape or not ((a == q) | ((a == PATH) & (q == OPEN))).all():
        return False
    free, s, g = _parts(q)
    dist = distances(free, s)[g]
    marked = set(np.flatnonzero(a == PATH).tolist())
    if dist < 0 or len(marked) != dist - 1:
        return False
    side = side_of(len(q))
    u, prev, steps = s, -1, 0
    while u != g:  # the marks must form a simple chain from S to G
        nxt = [v for v in _neighbours(u, side) if v != prev and (v in marked or v == g)]
        if len(nxt) != 1 and g not in nxt:
            return False
        prev, u = u, (g if g in nxt else nxt[0])
        steps += 1
    return steps == dist


def generate(
    rng: np.random.Generator, side: int = 30, min_path: int = 110, density=(0.3, 0.5), tries=200_000
) -> tuple[np.ndarray, np.ndarray, int]:
    """One maze: (question tokens, answer tokens, shortest path length > min_path)."""
    n = side * side
    for _ in range(tries):
        k = int(rng.integers(int(density[0] * n), int(density[1] * n) + 1))
        grid = np.full(n, OPEN, dtype=np.uint8)
        grid[rng.choice(n, size=k, replace=False)] = WALL
        free = np.flatnonzero(grid == OPEN)
        s = int(rng.choice(free))
        dist = distances(grid != WALL, s)
        far = np.flatnonzero(dist > min_path)
        if len(far) == 0:
            continue
        g = int(rng.choice(far))
        grid[s], grid[g] = START, GOAL
        answer, length = solve(grid)
        return grid, answer, length
    raise ValueError(f"no {side}x{side} maze with a path longer than {min_path} in {tries} tries")


# --------------------------------------------------------------------------- augmentation


def dihedral(grid_BHW: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """Official `dihedral_transform` per row: tid 0 id, 1-3 rot90 x k, 4 fliplr, 5 flipud,
    6 transpose, 7 anti-transpose. Square grids only."""
    out = np.empty_like(grid_BHW)
    for t in range(8):
        sel = np.flatnonzero(tid == t)
        if len(sel):
            out[sel] = dihedral_one(grid_BHW[sel], t, axes=(1, 2))
    return out


def dihedral_one(a: np.ndarray, tid: int, axes=(0, 1)) -> np.ndarray:
    r, c = axes
    if tid in (1, 2, 3):
        return np.rot90(a, k=tid, axes=axes)
    if tid == 4:
        return np.flip(a, axis=c)
    if tid == 5:
        return np.flip(a, axis=r)
    if tid == 6:
        return np.swapaxes(a, r, c)
    if tid == 7:
        return np.flip(np.rot90(a, k=1, axes=axes), axis=c)
    return a


INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def augment(inputs, labels, keys, side: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A random dihedral transform per row (keyed by keys[b]), same for question and answer."""
    x, y = np.asarray(inputs), np.asarray(labels)
    B = x.shape[0]
    tid = random_ints(np.asarray(keys, dtype=np.uint64), 8, stream=20)
    xa = dihedral(x.reshape(B, side, side), tid).reshape(B, -1)
    ya = dihedral(y.reshape(B, side, side), tid).reshape(B, -1)
    return xa, ya

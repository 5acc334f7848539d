"""One puzzle, given as text, solved by a restored model step by step (`evaluate.py --puzzle`).

The model runs `--max-steps` ACT steps (default halt_max_steps) from a fresh start with
`TRM.rollout_preds`; after each step its answer is printed as a grid. The step where it halts
is marked: the first step where `trm.model.should_halt` says stop at the model's
`halt_threshold`, at the latest halt_max_steps: the answer `TRM.predict(halt=True)` gives,
which is the answer reported. Puzzle identifier 0 (Sudoku and maze use no other).

Text formats, as the datasets encode them (docs/datasets.md): Sudoku, size*size characters
row-major, digits 1..size and '.' or '0' for a blank; maze, side*side characters of `# SGo`
(wall, open, start, goal; `o` marks the path in answers).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pipeline.checkpoints.restore import Restored, check_fits
from pipeline.config.run import ConfigError
from pipeline.tasks import TextPuzzle, get_task, task_names


def puzzle_task(r: Restored, data_uri: str | None) -> str:
    """The task of the run's dataset (or `data_uri`'s), else the first family the solver reads
    whose shape the model has (`TextPuzzle.fits`), else 'unknown'."""
    from pipeline.data.meta import read_meta

    if data_uri:  # named: it must be there and fit
        meta = read_meta(data_uri)
        check_fits(r, meta, data_uri)
        return meta.task
    try:
        return read_meta(r.config.data.uri).task
    except Exception:  # the run's dataset is gone or out of reach: the shape decides
        m = r.model_config
        for name in task_names():
            text = get_task(name).text
            if text is not None and text.fits(m.seq_len, m.vocab_size):
                return name
        return "unknown"


def _text_form(task: str) -> TextPuzzle | None:
    try:
        return get_task(task).text
    except ValueError:
        return None


def encode_puzzle(task: str, text: str, seq_len: int) -> np.ndarray:
    """`text` as the model's input tokens [seq_len]; `ConfigError` naming what is wrong."""
    n = math.isqrt(seq_len)
    form = _text_form(task)
    if form is None or n * n != seq_len:
        readable = [t for t in task_names() if get_task(t).text is not None]
        raise ConfigError(f"--puzzle takes {' and '.join(readable)} puzzles; this model is for "
                          f"{task} (seq_len {seq_len})")  # fmt: skip
    if len(text) != seq_len:
        raise ConfigError(f"--puzzle: a {n}x{n} {task} has {seq_len} characters, got {len(text)}")
    try:
        return form.parse(text, n)
    except ValueError as e:
        raise ConfigError(f"--puzzle: {e}") from None


def _cells(task: str, tokens: Any) -> list[str]:
    """The answer `tokens` as the puzzle's characters; tokens the encoding lacks print as '?'."""
    return get_task(task).text.cells(tokens)


def _grid(task: str, tokens: Any) -> list[str]:
    """Rows of `tokens` as text, the family's separator between cells."""
    n, chars = math.isqrt(len(tokens)), _cells(task, tokens)
    sep = get_task(task).text.separator
    return [sep.join(chars[i * n : (i + 1) * n]) for i in range(n)]


def halt_step(out: Any, r: Restored) -> tuple[int | None, bool]:
    """(the 1-based step where the model halts, whether its q head said so there rather than
    the halt_max_steps limit); the step is None when the rollout is shorter than
    halt_max_steps and the q head never says stop."""
    from trm.model import should_halt

    m = r.model_config
    says = should_halt(out.q_halt_logits[:, 0].float(), out.q_continue_logits[:, 0].float(),
                       no_ACT_continue=m.no_ACT_continue, threshold=m.halt_threshold)  # fmt: skip
    for k, stop in enumerate(says.tolist(), 1):
        if stop or k == m.halt_max_steps:
            return k, bool(stop)
    return None, False


def solve_one(r: Restored, text: str, data_uri: str | None, max_steps: int | None) -> str:
    """The printout of `r.model` solving `text`: the grid after every ACT step, the halting
    step marked, the answer and (Sudoku) whether it is valid."""
    m = r.model_config
    task = puzzle_task(r, data_uri)
    question = encode_puzzle(task, text, m.seq_len)
    device = next(r.model.parameters()).device
    inputs = torch.as_tensor(question, device=device).long()[None]
    steps = max_steps or m.halt_max_steps
    out = r.model.rollout_preds(inputs, torch.zeros(1, dtype=torch.long, device=device), steps)
    halt, q_said = halt_step(out, r)
    q = out.q_halt_logits[:, 0].float()
    if not m.no_ACT_continue:  # the rule compares q_halt with q_continue
        q = q - out.q_continue_logits[:, 0].float()
    lines = [f"checkpoint {r.checkpoint} (step {r.step}); {task}; halts where P(halt) > "
             f"{m.halt_threshold:g}, after at most {m.halt_max_steps} steps",
             "puzzle:", *_grid(task, question)]  # fmt: skip
    for k in range(1, steps + 1):
        mark = "" if halt != k else "  <- halts here" + ("" if q_said else " (step limit)")
        lines += [f"step {k} (P(halt) {torch.sigmoid(q[k - 1]).item():.3f}){mark}:",
                  *_grid(task, out.preds[k - 1, 0].tolist())]  # fmt: skip
    answer = out.preds[(halt or steps) - 1, 0].cpu().numpy()
    when = f"halted at step {halt}" if halt else f"did not halt within {steps} steps"
    lines.append(f"answer ({when}): " + repr("".join(_cells(task, answer.tolist()))))
    verdict = get_task(task).text.verdict
    if verdict is not None:
        lines.append("the answer is " + verdict(question, answer))
    return "\n".join(lines)

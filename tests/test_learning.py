"""A tiny TRM learns a small puzzle task end to end with the paper's training recipe.

Task: sort 8 digits (1..5). Training follows the official loop: one ACT step per optimiser
step with the carry passed on (halted slots take fresh examples), AdamATan2 on the weights,
SignSGD on the puzzle table, warm-up + cosine LR, loss / batch size. Evaluation runs
halt_max_steps ACT steps in eval mode and scores the last step's exact-sequence accuracy.
Stated target: >= 80% exact on 512 held-out sequences after 800 steps (about 0% at start;
~94% measured with this seed). Takes ~15-25 s on 2 CPU cores.
"""

from __future__ import annotations

import functools

import pytest
import torch

from trm import TRM, TRMConfig
from trm.losses import act_loss
from trm.optim import AdamATan2, SignSGD, lr_lambda

SEQ, VOCAB, STEPS, BATCH = 8, 6, 800, 64


def sorting_batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    x = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
    return {"inputs": x, "labels": x.sort(dim=1).values, "puzzle_identifiers": torch.zeros(n, dtype=torch.long)}  # fmt: skip


def exact_accuracy(model: TRM, data: dict[str, torch.Tensor]) -> float:
    model.eval()
    out = model.rollout(data["inputs"], data["puzzle_identifiers"])
    model.train()
    return (out.logits[-1].argmax(-1) == data["labels"]).all(-1).float().mean().item()


@pytest.fixture
def one_thread():
    # tiny matmuls: threading overhead (and a shared machine) costs more than it gains
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_trm_learns_to_sort(one_thread):
    torch.manual_seed(0)
    cfg = TRMConfig(
        hidden_size=32, num_heads=2, expansion=2, L_layers=1, H_cycles=2, L_cycles=2,
        seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=1, puzzle_emb_ndim=32,
        puzzle_emb_len=1, halt_max_steps=2, halt_exploration_prob=0.1, pos_encodings="rope",
    )  # fmt: skip
    model = TRM(cfg).train()
    opt = AdamATan2(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    table_opt = SignSGD(model.puzzle_emb, lr=1e-3, weight_decay=0.01)
    schedule = functools.partial(lr_lambda, warmup_steps=50, total_steps=STEPS, min_ratio=0.0)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (opt, table_opt)]
    train_gen = torch.Generator().manual_seed(1)
    test = sorting_batch(512, torch.Generator().manual_seed(2))

    start = exact_accuracy(model, test)
    carry = None
    for _ in range(STEPS):
        batch = sorting_batch(BATCH, train_gen)
        carry = model.initial_carry(batch) if carry is None else carry
        carry, out = model(carry, batch)
        loss, _ = act_loss(out, carry, loss_type="softmax")
        (loss / BATCH).backward()
        for o in (opt, table_opt):
            o.step()
            o.zero_grad()
        for s in scheds:
            s.step()

    final = exact_accuracy(model, test)
    print(f"sorting: exact accuracy {start:.3f} -> {final:.3f} after {STEPS} steps")
    assert start < 0.05
    assert final >= 0.80, f"exact accuracy {final:.3f} after {STEPS} steps (start {start:.3f})"
    assert model.puzzle_emb.weight.abs().sum() > 0  # the table was trained too

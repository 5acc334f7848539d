"""trm: a faithful, device-agnostic Tiny Recursive Model library (arXiv 2510.04871).

from trm import TRM, TRMConfig, flops
model = TRM(TRMConfig(hidden_size=64, seq_len=16, vocab_size=6))
carry = model.initial_carry(batch)
carry, out = model(carry, batch)          # one ACT step
"""

from trm.config import TRMConfig
from trm.flops import flops, inference_flops
from trm.model import TRM, Carry, Output, should_halt

__all__ = ["TRM", "Carry", "Output", "TRMConfig", "flops", "inference_flops", "should_halt"]

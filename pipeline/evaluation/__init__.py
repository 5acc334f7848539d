"""Evaluation: `evaluator` (the test-split evaluation training runs and `evaluate.py`
share), `figures`, `arc_vote` (ARC pass@K voting), `solve` (one puzzle, step by step)."""

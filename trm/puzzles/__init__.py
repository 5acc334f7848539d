"""Puzzle encodings and augmentations (pure numpy): Sudoku, Maze, ARC-AGI.

Token layouts match the official TRM dataset builders so that official checkpoints read our data;
augmentations are keyed by (seed, epoch, example index) through `trm.puzzles.rng`, so streaming
readers can apply them on the fly in any order. Storage and streaming live in `pipeline.data`.
"""

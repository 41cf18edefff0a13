"""Evaluation: the only reader of the truth."""

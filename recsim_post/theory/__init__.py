"""Closed-form results that the simulator's studies check (each module documents its formulas)."""

from .dropz import TwoContext, numeric_fit, shared_fit, tabular_fit

__all__ = ["TwoContext", "numeric_fit", "shared_fit", "tabular_fit"]

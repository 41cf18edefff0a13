"""Orchestration above truth, metrics and OPE: the evaluator of a log folder, the whole story
(simulate -> pre-train -> post-train -> score), dial sweeps, the OPE study, result tables and plots.
The CLI and the notebooks sit on top; nothing below imports this package."""

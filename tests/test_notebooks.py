"""Every notebook in notebooks/ runs top to bottom on small parameters, and is stored without outputs.

A notebook's first code cell is tagged ``parameters`` (cell metadata ``{"tags": ["parameters"]}``);
the test replaces its source with the small values in :data:`SMALL` (a notebook missing there runs
with its own parameters), executes the notebook in a temporary working directory and checks that
the key outputs are there. Notebooks write only under a temporary folder, never into the repo.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import require

nbformat = require("nbformat")
nbclient = require("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

SMALL: dict[str, dict[str, object]] = {
    "01-quickstart.ipynb": dict(
        N_USERS=120, N_ITEMS=60, N_ROUNDS=8, PRETRAIN_EPOCHS=2, FINETUNE_EPOCHS=1, SEED=0
    ),
    "02-off-policy-evaluation.ipynb": dict(N_USERS=150, N_ITEMS=80, N_ROUNDS=10, EPOCHS=1, BOOTSTRAP=20, SEED=0),
    "03-semantic-ids-and-gflowgr.ipynb": dict(
        N_USERS=80, N_ITEMS=60, N_ROUNDS=8, PRETRAIN_EPOCHS=1, FINETUNE_EPOCHS=1, TOY_STEPS=150, SEED=0
    ),
    "04-noise-and-theory.ipynb": dict(
        N_USERS=60, N_ITEMS_GRID=[40, 120], SIGMAS=[0.5, 1.0], LAMBDAS=[0.2, 5.0], CONTEXTS=40,
        LAM_GRID=[0.3, 100.0], NOISES=[0.0, 1.5], BIASES=[0.0, 1.0], SEEDS=[0], PRETRAIN_EPOCHS=1,
        FINETUNE_EPOCHS=1, SEED=0,
    ),
}
"""Small parameters per notebook: enough to run every cell, not to tell a convincing story."""

EXPECTED: dict[str, list[str]] = {
    "01-quickstart.ipynb": [
        "exp-rsft", "oracle", "logging policy", "true_value_norm", "ndcg@10",
        "exp-RSFT", "true reward",
    ],
    "02-off-policy-evaluation.ipynb": [
        "switch-dr", "with true propensities", "with estimated ones", "exact off-support term",
    ],
    "03-semantic-ids-and-gflowgr.ipynb": [
        "collision_rate", "nmi_genre_level1", "lone child", "KL(R/ΣR ‖ π)", "gflowgr-tb", "gflowgr-db",
        "sft-token", "true_value_norm", "tb_abs_residual", "share_on_policy", "normalised ground truth",
    ],
    "04-noise-and-theory.ipynb": [
        "largest share of contexts violating a bound", "noise_cost_per_sqrtlog", "best λ here is", "matched_norm",
        "c* = λ log Z(A)", "user − batch", "exp-rsft[lam=0.3,normalize=user]",
    ],
}
"""Strings that must appear in a notebook's outputs (the results table, the computed discussion)."""

IDS = [p.name for p in PATHS]


def parameters_cell(nb) -> int | None:  # noqa: ANN001 - nbformat.NotebookNode
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def with_parameters(nb, params: dict[str, object]):  # noqa: ANN001, ANN201
    """``nb`` with its ``parameters`` cell's source replaced by ``params`` (inserted first if none)."""
    if not params:
        return nb
    source = "# parameters injected by tests/test_notebooks.py\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    i = parameters_cell(nb)
    if i is None:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}))
    else:
        nb.cells[i].source = source
    return nb


def output_text(nb) -> str:  # noqa: ANN001
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def n_images(nb) -> int:  # noqa: ANN001
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    )


def test_there_are_notebooks() -> None:
    assert PATHS, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_notebook_is_stored_clean(path: Path) -> None:
    """No outputs or execution counts in the repo (small, diff-friendly); a tagged parameters cell."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"
    i = parameters_cell(nb)
    assert i is not None, f"{path.name}: tag a cell 'parameters' so tests can shrink it"
    first_code = next(j for j, c in enumerate(nb.cells) if c.cell_type == "code")
    assert i == first_code, f"{path.name}: the parameters cell must be the first code cell"
    if path.name in SMALL:
        ns: dict[str, object] = {}
        exec(nb.cells[i].source, ns)  # noqa: S102 - our own notebook's literal assignments
        missing = set(SMALL[path.name]) - set(ns)
        assert not missing, f"{path.name}: the parameters cell lacks {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_notebook_runs_on_small_parameters(path: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # tempfile.mkdtemp in the kernel lands here too, so nothing is left behind in /tmp.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    nb = with_parameters(nbformat.read(path, as_version=4), SMALL.get(path.name, {}))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on error

    text = output_text(nb)
    missing = [s for s in EXPECTED.get(path.name, []) if s not in text]
    assert not missing, f"{path.name}: outputs lack {missing}"
    assert n_images(nb) >= 1, f"{path.name}: no figure was shown"
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, f"{path.name} wrote files into notebooks/"

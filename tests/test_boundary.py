"""The one boundary that matters most: training code never sees the world or the sealed tables."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import recsim_post

PACKAGE = Path(recsim_post.__file__).parent
TRAINING = ("models", "posttrain")
FORBIDDEN = (
    "recsim_post.world",
    "recsim_post.behavior",
    "recsim_post.truth",
    "recsim_post.metrics",
    "recsim_post.ope",
    "recsim_post.experiments",
    "recsim_post.envs",
    "recsim_post.logs.simulate",
)


def _imports(path: Path) -> set[str]:
    module = "recsim_post." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_training_code_imports_nothing_that_holds_the_truth():
    files = [p for d in TRAINING for p in (PACKAGE / d).rglob("*.py")]
    assert len(files) >= 6
    for path in files:
        bad = sorted(m for m in _imports(path) if m.startswith(FORBIDDEN))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_importing_training_code_loads_no_world_module():
    code = (
        "import sys, recsim_post.posttrain, recsim_post.models, recsim_post.logs.public\n"
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r}) and m != 'recsim_post.envs.registration' and m != 'recsim_post.envs']\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_logs_hold_no_sealed_column(tmp_path):
    from recsim_post.logs.public import INTERACTION_SCHEMA

    sealed = {"true_reward", "propensity", "propensity_item", "theta", "quality", "hype"}
    assert not sealed & set(INTERACTION_SCHEMA.names)

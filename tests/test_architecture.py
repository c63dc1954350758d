"""The import contracts of pyproject.toml's [tool.importlinter], checked by `lint-imports`: trials imports
neither orchestrator nor bench, orchestrator never imports bench, orchestrator/run_record.py imports no Ray,
torch or MLflow, and no package's modules import each other in a cycle, counting the imports placed inside
functions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_the_run_record_loads_without_ray_torch_or_mlflow():
    """What run_record imports in turn (trials.config) may name those inside functions; loading it loads none."""
    probe = "import sys, orchestrator.run_record; print(sorted({'ray', 'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"

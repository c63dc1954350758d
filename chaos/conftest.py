"""`make chaos`: the fault matrix of issue 21 replayed against the real components; not part of `make test`.

The scenarios here reuse the suite's helpers, so tests/ goes on sys.path (sweep_support,
service_support, the test modules whose flows a scenario extends). tests/conftest.py is loaded under
another module name: pytest imports every conftest as `conftest`, and only a directory's own conftest
gives its fixtures to the tests below it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

_spec = importlib.util.spec_from_file_location("suite_conftest", TESTS / "conftest.py")
suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite)

orchestrator = suite.orchestrator

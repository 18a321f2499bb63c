"""The compiled loops: cached on disk where numba can write, compiled per process elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numba
import pytest

from calapi.model import kernels

LOAD_AND_PREDICT = """
import sys
import numpy as np
from calapi.serving.sources import source_for
model = source_for(sys.argv[1]).load()
row = np.array([[1, 30, 180, 80, 20, 100, 40.0]])
print(type(model.predict).__name__, float(model.predict(row)[0]))
"""


def test_a_second_process_loads_the_loops_from_the_cache(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """The first process writes the machine code to NUMBA_CACHE_DIR, the second reads it, and
    both serve the same kcal on the fast path."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}

    def load() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", LOAD_AND_PREDICT, str(trained_model_dir)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True)

    first, second = load(), load()
    assert any(tmp_path.rglob("kernels.model_rows-*.nbi")), first.stdout
    assert "[cache] data saved" in first.stdout
    assert "[cache] data loaded" in second.stdout
    assert "[cache] data saved" not in second.stdout
    [answer] = {line for line in (first.stdout + second.stdout).splitlines() if "Predictor" in line}
    assert answer.startswith("FastPredictor ")


def test_without_a_writable_cache_the_loops_still_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba finds no cache folder (a read-only install, no home) it refuses cache=True;
    the loop is compiled in the process instead."""
    real = numba.njit

    def no_cache_folder(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'twice': no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_cache_folder)

    def twice(x: float) -> float:
        return 2.0 * x

    assert kernels.jit(twice)(3.5) == 7.0

"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

NTM_COPY = Path(__file__).resolve().parents[1] / "examples" / "ntm_copy"


def load_ntm_example(name: str) -> ModuleType:
    """examples/ntm_copy/NAME.py as a module (the folder is not a package). The scripts import
    their neighbours as ``copy_data`` and ``train``; those names are taken out of ``sys.modules``
    again afterwards, so that other examples' modules are not shadowed by these."""
    neighbours = ("copy_data", "train")
    saved = {k: sys.modules.pop(k) for k in neighbours if k in sys.modules}
    sys.path.insert(0, str(NTM_COPY))
    try:
        spec = importlib.util.spec_from_file_location(f"ntm_copy_{name}", NTM_COPY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(NTM_COPY))
        for k in neighbours:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return module


@pytest.fixture(scope="session")
def ntm_example() -> Callable[[str], ModuleType]:
    """Loader of the NTM copy-task example scripts (see :func:`load_ntm_example`)."""
    return load_ntm_example

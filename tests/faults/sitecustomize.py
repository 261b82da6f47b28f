"""Imported by Python at start-up when this folder leads PYTHONPATH (reliability tests only): installs the faults
named in SFTFORGE_FAULT by patching `sftforge.train.run` right after it is imported (see sftforge_faults.py)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

TARGET = "sftforge.train.run"


class _PatchAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds TARGET with the normal machinery, runs it, then applies the faults to the loaded module."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real spec without finding ourselves
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        import sftforge_faults

        sftforge_faults.patch_run_module(module, sftforge_faults.parse(os.environ["SFTFORGE_FAULT"]))


if os.environ.get("SFTFORGE_FAULT"):
    sys.meta_path.insert(0, _PatchAfterImport())

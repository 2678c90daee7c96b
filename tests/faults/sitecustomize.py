"""Faults injected into real trial processes (tests only): on PYTHONPATH, Python imports this in
every process of the sweep, Ray's workers included. RESNET_SWEEP_TEST_FAULTS names a folder of
`<depth>-<lr>` files, each holding what the trial of that depth and lr does at its second epoch:
`raise-once` (a RuntimeError on its first attempt only), `oom` (torch's OutOfMemoryError,
as CUDA raises it, on every attempt) or `hold` (it waits there for as long as the file says so:
midway while other trials finish). A file `hold` holding a number k holds every trial once it
has reported epoch k, for as long as the file is there: a test interrupts a sweep in a known
state, not by the clock (a loaded machine would let a trial run to its end first)."""

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

FOLDER = os.environ.get("RESNET_SWEEP_TEST_FAULTS")


def _inject(module) -> None:
    import torch

    original = module.Trainer._train_epoch

    def _train_epoch(self):
        hold = Path(FOLDER, "hold")
        while hold.is_file() and hold.read_text().strip() == str(self.epoch):
            time.sleep(0.05)
        plan = Path(FOLDER, f"{self.cfg.model.depth}-{self.cfg.train.lr:g}")
        while self.epoch == 1 and plan.is_file() and plan.read_text().strip() == "hold":
            time.sleep(0.05)
        if self.epoch == 1 and plan.is_file():
            fault = plan.read_text().strip()
            if fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")
            if fault == "raise-once":
                plan.write_text("done")
                raise RuntimeError("injected fault: the first attempt fails")
        return original(self)

    module.Trainer._train_epoch = _train_epoch


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches resnet_core.train once it is imported (only trial processes import it)."""

    def find_spec(self, name, path, target=None):
        if name != "resnet_core.train":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _inject(module)

        spec.loader.exec_module = exec_module
        return spec


if FOLDER:
    sys.meta_path.insert(0, _AfterImport())

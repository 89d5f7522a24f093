"""Process-wide compatibility shims, installed before anything imports torchvision.

PyPI's torchvision 0.28.0 wheel is a CUDA build. Beside the CPU build of torch its import fails
("operator torchvision::nms does not exist") because the CUDA wheel registers kernels for op
schemas that only its own C++ library would define. Defining the two schemas first with
`torch.library` makes the import succeed; the kernels stay unavailable, and nothing here calls them.

The shim is lazy: `install()` only adds a meta-path hook, so processes that never import
torchvision (most pipeline commands) never pay for importing torch. `install()` runs from every
paraforge package and, through `worker_process_setup_hook`, in every Ray worker.
"""

from __future__ import annotations

import importlib.abc
import sys

_TORCHVISION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive: dropping it unregisters the schemas


def define_torchvision_ops() -> None:
    global _library
    if _library is not None:
        return
    import torch

    if torch.version.cuda:  # a CUDA torch defines these itself
        _library = False
        return
    from torch.library import Library

    _library = Library("torchvision", "DEF")
    for schema in _TORCHVISION_OP_SCHEMAS:
        _library.define(schema)


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_torchvision_ops()
        return None  # let the normal finders import it


def install() -> None:
    """Idempotent; safe to call from any process before or after torch is imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())


install()

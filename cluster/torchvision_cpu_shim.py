"""Lets torchvision's pure-torch parts import beside a CPU-only torch.

PyPI's torchvision is linked against CUDA; its `_C` extension fails to load next to torch+cpu, and the
fake-tensor registrations for `torchvision::nms`/`qnms` then crash the import. Defining those two op schemas
before torchvision is first imported lets `torchvision.transforms.v2` (needed by Qwen2-VL's processors and
vLLM's Qwen2-VL model file) import; torchvision's C++ ops (nms, roi_align) stay unavailable.
Installed as a .pth hook by cluster/install.sh so every interpreter, Ray workers included, gets it.
"""
import importlib.abc
import sys

_lib = None


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        global _lib
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            _lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                try:
                    _lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except RuntimeError:  # already defined (e.g. a working torchvision build)
                    pass
        return None


sys.meta_path.insert(0, _DefineTorchvisionOps())

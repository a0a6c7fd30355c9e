"""Reading weights of a model that accelerate spread over devices and disk (`device_map="auto"`).

Offloaded parameters are meta tensors until accelerate's hook brings them in for a forward; code that reads
weights outside a forward (the fingerprint, weight similarity) must bring them in too. `onload` does it with
accelerate's own `align_module_device`, and is a no-op for a model in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from torch import nn


@contextmanager
def onload(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Within the block, every parameter of `modules` holds its real values (on its execution device)."""
    with ExitStack() as stack:
        for m in modules:
            if any(hasattr(sub, "_hf_hook") for sub in m.modules()):
                from accelerate.utils import align_module_device

                for sub in m.modules():
                    if hasattr(sub, "_hf_hook"):
                        stack.enter_context(align_module_device(sub))
        yield


def input_device(model: nn.Module):
    """Where a forward's inputs go: the first weight's device, or, when accelerate offloaded it (meta), the
    execution device its hook computes on."""
    device = next(model.parameters()).device
    if device.type != "meta":
        return device
    for m in model.modules():
        hook = getattr(m, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return hook.execution_device
    return "cpu"

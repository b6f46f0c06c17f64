"""Hooks in tests: every hook a module tree holds, and recording chosen modules' outputs."""

import torch


def all_hooks(module: torch.nn.Module) -> list:
    """Every forward (pre-)hook installed anywhere in a module tree."""
    return [
        hook for m in module.modules() for hooks in (m._forward_hooks, m._forward_pre_hooks) for hook in hooks.values()
    ]


class Capture:
    """Records the outputs of chosen modules, with hooks registered after the injector's own."""

    def __init__(self, unet, names):
        modules = dict(unet.named_modules())
        self.outputs = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output.detach().clone()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

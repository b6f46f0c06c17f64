"""Small test utilities."""

import torch


def all_hooks(module: torch.nn.Module) -> list:
    """Every forward (pre-)hook installed anywhere in a module tree."""
    return [
        hook
        for m in module.modules()
        for hooks in (m._forward_hooks, m._forward_pre_hooks)
        for hook in hooks.values()
    ]

"""Small test utilities."""

import json

import torch


def all_hooks(module: torch.nn.Module) -> list:
    """Every forward (pre-)hook installed anywhere in a module tree."""
    return [
        hook
        for m in module.modules()
        for hooks in (m._forward_hooks, m._forward_pre_hooks)
        for hook in hooks.values()
    ]


# Equal weights in two model instances are not bit-identical in use. Where a weight sits in memory
# depends on how it was loaded (a view into one file or another, or a copy: accelerate's offload
# hooks re-allocate every weight), and the CPU's matrix kernels choose their SIMD paths by the
# operands' alignment, so float32 products are summed in another order. On an AMD EPYC, moving
# the tiny UNet's weights to each 4-byte offset modulo 64 moved the latents of a translation
# (3 inversion and 3 sampling steps, latents up to 5.1 in size) by 0 to 7.9e-5, with a period of
# 16 bytes, and the same weights at the same alignment gave the same bits. Another processor
# takes other paths: the latents an Intel Xeon stored (tests/data/engine-v0-latents.npz) differ from
# the AMD EPYC's by up to 1.5e-4 on latents up to 8.5. 5e-4 (1e-4 of the latents' size) covers both with a 3x margin;
# a target translated without injection differs by 0.85. Bit-identity is asserted only for the
# same weights in the same memory, run on the same inputs.
INSTANCE_TOLERANCE = dict(rtol=0, atol=5e-4)


def unreachable_hub_env(home) -> dict[str, str]:
    """Environment variables of a machine without the model hub: its host name cannot resolve (.invalid never
    does, RFC 6761), no proxy would resolve it instead, and the Hugging Face cache in ``home`` is empty."""
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(home), "NO_PROXY": "*",
            "no_proxy": "*"}


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    """A file in the safetensors format: the header's length (8 bytes, little-endian), the header, the data."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data

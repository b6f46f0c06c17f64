"""Writing a Stable Diffusion 1.x pipeline as one original-layout (LDM) checkpoint, for the single-file tests.

diffusers reads these files (``from_single_file``) but cannot write them: the package has no
diffusers-to-original converter (the diffusers repository keeps its conversion scripts outside
the package, and they need the original model code). This is the reverse of its key renaming,
written from the original layout: UNet blocks as ``input_blocks``/``middle_block``/``output_blocks``
with resnets as ``in_layers``/``emb_layers``/``out_layers``, the VAE's ``down``/``mid``/``up`` blocks
(decoder blocks numbered from the deepest) with 1x1-convolution attention, and the CLIP text
encoder's own keys under ``cond_stage_model.transformer.text_model``.
"""

from __future__ import annotations

import re

from safetensors.torch import save_file

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def write_ldm_checkpoint(pipe, path) -> None:
    """Save ``pipe``'s UNet, VAE and text encoder (SD 1.x layout) as one safetensors file in the original layout."""
    tensors = {}
    layers = pipe.unet.config.layers_per_block
    attentions = {i for i, kind in enumerate(pipe.unet.config.up_block_types) if kind.startswith("CrossAttn")}
    for key, value in pipe.unet.state_dict().items():
        tensors["model.diffusion_model." + _unet_key(key, layers, attentions)] = value
    blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        ldm = _vae_key(key, blocks)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention projections are 1x1 convolutions
        tensors["first_stage_model." + ldm] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers' CLIPTextModel keeps its text model at the top since version 5; the original nests it.
        tensors["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _unet_key(key: str, layers: int, up_attentions: set[int]) -> str:
    for ours, theirs in UNET_FIXED.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        place = f"input_blocks.{block * (layers + 1) + index + 1}"
        return f"{place}.0.{_resnet(rest)}" if kind == "resnets" else f"{place}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, index, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * index}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        place = f"output_blocks.{block * (layers + 1) + index}"
        return f"{place}.0.{_resnet(rest)}" if kind == "resnets" else f"{place}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        return f"output_blocks.{block * (layers + 1) + layers}.{2 if block in up_attentions else 1}.conv.{m[2]}"
    raise KeyError(key)


def _resnet(rest: str) -> str:
    name, _, param = rest.rpartition(".")
    return f"{UNET_RESNET[name]}.{param}"


def _vae_key(key: str, blocks: int) -> str:
    fixed = {"conv_norm_out": "norm_out"}
    if m := re.match(
        r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key
    ):
        part, direction, block, kind, index, rest = m[1], m[2], int(m[3]), m[4], m[5], m[6]
        number = block if direction == "down" else blocks - 1 - block  # decoder blocks count from the deepest
        if kind == "resnets":
            return f"{part}.{direction}.{number}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{part}.{direction}.{number}.{'downsample' if direction == 'down' else 'upsample'}.{rest}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    part, _, rest = key.partition(".")
    name, _, param = rest.rpartition(".")
    return f"{part}.{fixed.get(name, name)}.{param}" if part in ("encoder", "decoder") else key

"""PCA of feature rows and of self-attention maps: planted structure, colour scaling, the maps, chunking."""

import numpy as np
import pytest
import torch

from pnp.visual.attention_maps import SelfAttentionMaps
from pnp.visual.pca import matrix_free_pca_scores, pca_scores, scores_to_rgb
from support.reference import dense_attention_maps

SMALL_LAYER = "up_blocks.3.attentions.2.transformer_blocks.0.attn1"  # 16x16 positions at 128 px on the tiny model
# 4x4 positions: 3 images have 48 rows, fewer than the Krylov basis can hold, so the iteration
# ends with every direction of the matrix in its basis.
TINY_LAYER = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"


class Dense:
    """A matrix held whole, as the row operator the matrix-free PCA takes."""

    def __init__(self, x):
        self.x, self.shape = x, tuple(x.shape)

    def matmul(self, v):
        return self.x @ v

    def rmatmul(self, u):
        return self.x.T @ u


def planted_features(noise: float):
    """24x32 positions, 16 channels: three known uncorrelated patterns (variances 9:4:1), mixed, plus noise.

    Returns the features and the patterns; PCA must give back each pattern up to sign and scale.
    """
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 32), indexing="ij")
    square = ((x.abs() < 0.4) & (y.abs() < 0.5)).double()
    patterns = torch.stack([x, y, square], dim=-1).reshape(-1, 3).double()
    # Centred and orthonormalised, the patterns are exactly the principal directions of the mix.
    patterns, _ = torch.linalg.qr(patterns - patterns.mean(dim=0))
    mix, _ = torch.linalg.qr(torch.randn(16, 3, generator=generator, dtype=torch.float64))
    features = (patterns * torch.tensor([3.0, 2.0, 1.0])) @ mix.T + 5.0  # an offset the centring must remove
    rms = patterns.std()  # of the weakest pattern, whose scale is 1
    return features + noise * rms * torch.randn(features.shape, generator=generator, dtype=torch.float64), patterns


@pytest.mark.parametrize("method", ["exact", "matrix-free"])
def test_pca_recovers_a_planted_image(method):
    features, patterns = planted_features(noise=0.05)
    scores = pca_scores(features) if method == "exact" else matrix_free_pca_scores(Dense(features.float()))
    for k in range(3):
        correlation = np.corrcoef(scores[:, k].numpy(), patterns[:, k].numpy())[0, 1]
        # Noise of 5% of the weakest pattern's spread leaves |r| above 0.99; a swapped or missed
        # component gives |r| near 0 (the patterns are uncorrelated).
        assert abs(correlation) > 0.99, (k, correlation)
    largest = scores.abs().argmax(dim=0)
    assert (scores[largest, torch.arange(3)] > 0).all()  # scikit-learn's sign convention


def test_missing_components_are_zero_and_drawn_as_zero():
    scores = pca_scores(torch.tensor([[0.0, 1.0], [1.0, 1.0], [5.0, 1.0]]))  # one direction of variance
    torch.testing.assert_close(scores[:, 0], torch.tensor([-2.0, -1.0, 3.0]))  # centred x, largest positive
    assert scores[:, 1:].abs().max() < 1e-6
    assert scores_to_rgb(scores, images=1)[0].tolist() == [[0, 0, 0], [51, 0, 0], [255, 0, 0]]


def test_colours_are_min_max_scaled_per_image_and_component():
    scores = torch.tensor(
        [
            # image 0: three positions
            [0.0, 4.0, -1.0],
            [1.0, 4.0, 1.0],
            [2.0, 4.0, 0.0],
            # image 1
            [10.0, 1.0, 0.0],
            [0.0, 2.0, 0.0],
            [5.0, 3.0, 1.0],
        ]
    )
    expected = [
        [[0, 0, 0], [128, 0, 255], [255, 0, 128]],  # a constant component is 0; halves round up
        [[255, 0, 0], [0, 128, 0], [128, 255, 255]],
    ]
    assert scores_to_rgb(scores, images=2).tolist() == expected


def test_a_component_flat_to_rounding_is_drawn_as_zero():
    # Image 1 varies by 0.5 where scores reach 1e6: float32 keeps ~0.06 there, so it is rounding noise.
    scores = torch.tensor([[-1e6, 0, 0], [1e6, 0, 0], [3.0, 0, 0], [3.5, 0, 0]])
    assert scores_to_rgb(scores, images=2)[:, :, 0].tolist() == [[0, 255], [0, 0]]


@pytest.fixture(scope="module")
def attention(pipe):
    """attention(layer): to_q, to_k, to_v outputs and the attention output (to_out's input) of a layer."""
    cache = {}

    def outputs(name):
        if name not in cache:
            cache[name] = _layer_outputs(pipe, name)
        return cache[name]

    return outputs


def _layer_outputs(pipe, name):
    layer = dict(pipe.unet.named_modules())[name]
    seen, handles = {}, []
    for part in ("to_q", "to_k", "to_v"):
        handles.append(getattr(layer, part).register_forward_hook(lambda m, i, o, part=part: seen.__setitem__(part, o)))
    handles.append(layer.to_out[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("out", args[0])))
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 16, 16, generator=generator)
    embeddings, _ = pipe.encode_prompt(["a cat", "a dog", ""], "cpu", 1, False)
    try:
        with torch.inference_mode():
            pipe.unet(latents, 401, encoder_hidden_states=embeddings)
    finally:
        for handle in handles:
            handle.remove()
    return seen, layer.heads


@pytest.mark.parametrize("layer", [SMALL_LAYER, TINY_LAYER])
def test_attention_maps_are_the_layers_own_and_rows_sum_to_one(attention, layer):
    seen, heads = attention(layer)
    maps = dense_attention_maps(SelfAttentionMaps(seen["to_q"], seen["to_k"], heads))
    images, positions, channels = seen["to_v"].shape
    per_head = maps.view(images, positions, heads, positions)
    # Softmax rows: at most 256 float32 terms, each rounded by ~6e-8.
    torch.testing.assert_close(per_head.sum(dim=-1), torch.ones(images, positions, heads), rtol=0, atol=1e-5)
    # The diffusers processor's output is A V per head, heads concatenated: the maps must reproduce
    # it. Both are float32 with different kernels (SDPA vs softmax and matmul): 1e-5 relative.
    v = seen["to_v"].view(images, positions, heads, channels // heads)
    out = torch.einsum("iphq,iqhd->iphd", per_head, v).reshape(images, positions, channels)
    torch.testing.assert_close(out, seen["out"], rtol=1e-5, atol=1e-5)


# Blocks of 32 query rows divide 256 positions; 24 and 5 leave a shorter last block.
@pytest.mark.parametrize("layer,block_rows", [(SMALL_LAYER, 32), (SMALL_LAYER, 24), (TINY_LAYER, 5)])
def test_chunked_attention_pca_equals_the_direct_one(attention, layer, block_rows):
    seen, heads = attention(layer)
    images, positions, _ = seen["to_q"].shape
    maps = SelfAttentionMaps(seen["to_q"], seen["to_k"], heads, block_elements=block_rows * heads * positions)
    blocks = []
    computed = maps.maps
    maps.maps = lambda image, rows: blocks.append(rows.stop - rows.start) or computed(image, rows)
    chunked = matrix_free_pca_scores(maps).double()
    assert max(blocks) == block_rows and len(set(blocks)) == (1 if positions % block_rows == 0 else 2)

    # Direct: every map at once (images x P rows, heads x P columns), centred; the scores are the
    # top eigenvectors of its Gram matrix times the roots of their eigenvalues, in float64.
    x = dense_attention_maps(SelfAttentionMaps(seen["to_q"], seen["to_k"], heads)).double()
    x = x - x.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(x @ x.T)
    direct = eigenvectors[:, -3:].flip(1) * eigenvalues[-3:].flip(0).sqrt()
    for k in range(3):
        sign = torch.sign(torch.dot(direct[:, k], chunked[:, k]))
        # Products in float32 over up to 2048 columns, to the iteration's 1e-5 rad: 1e-4 of the largest score.
        torch.testing.assert_close(chunked[:, k] * sign, direct[:, k], rtol=0, atol=1e-4 * direct.abs().max())

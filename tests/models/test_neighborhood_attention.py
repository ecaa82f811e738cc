"""DiNAT's neighbourhood attention: the pure-PyTorch path equals natten's, and it trains."""

import warnings
from itertools import pairwise

import pytest
import torch

from trashseg.models import build_model
from trashseg.models.dinat import DinatBackbone, dinat_backbone_config
from trashseg.models.neighborhood_attention import (
    neighborhood_attention,
    neighborhood_attention_reference,
    neighborhood_indices,
)


def qkv(height, width, heads=2, head_dim=8, batch=2, seed=0, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, height, width, heads, head_dim)
    return [torch.randn(shape, generator=generator, dtype=dtype).to(device) for _ in range(3)]


def natten_na2d(query, key, value, kernel_size, dilation):
    from natten.functional import na2d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # natten's note that CPU flex attention runs uncompiled
        return na2d(query, key, value, kernel_size=kernel_size, dilation=dilation)


@pytest.mark.parametrize(
    ("height", "width", "kernel_size", "dilation"),
    [(9, 11, 3, 1), (9, 11, 3, 2), (14, 13, 5, 2), (16, 16, 3, 5), (12, 15, 7, 1), (22, 21, 7, 3)],
)
def test_reference_matches_natten_cpu_forward(height, width, kernel_size, dilation):
    query, key, value = qkv(height, width)
    expected = natten_na2d(query, key, value, kernel_size, dilation)
    actual = neighborhood_attention_reference(query, key, value, kernel_size, dilation)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_neighbourhoods_are_full_windows_in_the_query_sub_grid():
    length, kernel_size, dilation = 17, 3, 4
    indices = neighborhood_indices(length, kernel_size, dilation)
    assert indices.shape == (length, kernel_size)
    for position, window in enumerate(indices.tolist()):
        assert position in window
        assert len(set(window)) == kernel_size
        assert all(0 <= i < length and i % dilation == position % dilation for i in window)
        assert [b - a for a, b in pairwise(window)] == [dilation] * (kernel_size - 1)
    # Interior positions are centred; border windows shift inwards instead of shrinking.
    assert indices[8].tolist() == [4, 8, 12]
    assert indices[1].tolist() == [1, 5, 9]


def test_reference_backward_matches_finite_differences():
    query, key, value = (
        t.double().requires_grad_() for t in qkv(6, 6, heads=1, head_dim=2, batch=1)
    )
    assert torch.autograd.gradcheck(
        lambda q, k, v: neighborhood_attention_reference(q, k, v, 3, 2),
        (query, key, value),
        fast_mode=True,
    )


def test_cpu_dispatch_uses_the_differentiable_path():
    query, key, value = (t.requires_grad_() for t in qkv(8, 8))
    neighborhood_attention(query, key, value, 3, 2).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (query, key, value))


def test_maps_smaller_than_the_dilated_kernel_are_rejected_with_the_fix():
    query, key, value = qkv(5, 9)
    with pytest.raises(ValueError, match=r"5x9 is smaller than kernel_size\*dilation = 3\*2"):
        neighborhood_attention_reference(query, key, value, 3, 2)
    with pytest.raises(ValueError, match="odd kernel_size"):
        neighborhood_attention_reference(*qkv(8, 8), 4, 1)


def test_backbone_pads_small_maps_and_backpropagates_to_the_stem():
    torch.manual_seed(0)
    backbone = DinatBackbone(dinat_backbone_config(tiny=True)).train()
    # 16x16 input: stage-1 maps are 4x4, smaller than kernel 3 x dilation 2, so they are padded.
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    features = backbone(images).feature_maps
    assert [tuple(f.shape) for f in features] == [
        (2, 32, 4, 4),
        (2, 64, 2, 2),
        (2, 128, 1, 1),
        (2, 256, 1, 1),
    ]
    sum(f.square().mean() for f in features).backward()
    stem = backbone.embeddings.patch_embeddings.projection[0].weight
    attention = backbone.encoder.levels[0].layers[0].attention.self.query.weight
    assert stem.grad.abs().sum() > 0 and attention.grad.abs().sum() > 0
    assert images.grad.abs().sum() > 0


def test_dilated_layer_mixes_only_its_own_sub_grid():
    """With dilation 2 and no other mixing (one NA layer), an output position depends only on
    inputs of its own parity sub-grid: checks that the model really uses dilation."""
    query, key, value = (t.requires_grad_() for t in qkv(8, 8, batch=1))
    out = neighborhood_attention_reference(query, key, value, 3, 2)
    out[0, 2, 4].sum().backward()
    touched = value.grad[0].abs().sum(dim=(-1, -2)).nonzero().tolist()
    assert touched and all(r % 2 == 0 and c % 2 == 0 for r, c in touched)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("kernel_size", "dilation"), [(3, 1), (7, 2), (11, 3)])
def test_natten_cuda_path_matches_reference_forward_and_backward(kernel_size, dilation):
    query, key, value = (
        t.requires_grad_() for t in qkv(40, 36, heads=4, head_dim=32, device="cuda")
    )
    fused = neighborhood_attention(query, key, value, kernel_size, dilation)
    fused_grads = torch.autograd.grad(fused.square().sum(), (query, key, value))
    reference = neighborhood_attention_reference(query, key, value, kernel_size, dilation)
    reference_grads = torch.autograd.grad(reference.square().sum(), (query, key, value))
    torch.testing.assert_close(fused, reference, atol=2e-3, rtol=2e-3)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(fused_grad, reference_grad, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask2former_dinat_trains_on_cuda_with_natten():
    model = build_model("mask2former-dinat-l-tiny", 4).cuda().train()
    images = torch.randn(2, 3, 128, 128, device="cuda")
    masks = torch.randint(0, 4, (2, 128, 128), device="cuda")
    loss = model.loss(images, masks)
    loss.backward()
    assert torch.isfinite(loss)
    stem = model.network.model.pixel_level_module.encoder.embeddings.patch_embeddings.projection[0]
    assert stem.weight.grad.abs().sum() > 0

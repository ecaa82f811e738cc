"""The pure-PyTorch modulated deformable convolution against a per-location loop written from the
DCNv2 definition, forward and backward, and against torchvision's kernel where both exist."""

import math

import pytest
import torch

from trashseg.models.deform_conv import (
    ModulatedDeformConv2d,
    _torchvision_deform_conv2d,
    deform_conv2d_reference,
    modulated_deform_conv2d,
)


def bilinear(image: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Value of one (H, W) channel at fractional (y, x), corners outside the image being zero."""
    height, width = image.shape
    y0, x0 = math.floor(y.item()), math.floor(x.item())
    total = image.new_zeros(())
    for corner_y, weight_y in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for corner_x, weight_x in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= corner_y < height and 0 <= corner_x < width:
                total = total + weight_y * weight_x * image[corner_y, corner_x]
    return total


def loop_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation):
    batch, channels, _, _ = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    groups = offset.shape[1] // (2 * taps)
    out_h, out_w = offset.shape[-2:]
    rows = []
    for b in range(batch):
        for o in range(out_channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    value = bias[o]
                    for c in range(channels):
                        g = c // (channels // groups)
                        for i in range(kernel_h):
                            for j in range(kernel_w):
                                k = i * kernel_w + j
                                y = oy * stride - padding + i * dilation + offset[b, 2 * (g * taps + k), oy, ox]
                                x = ox * stride - padding + j * dilation + offset[b, 2 * (g * taps + k) + 1, oy, ox]
                                sample = bilinear(input[b, c], y, x)
                                value = value + weight[o, c, i, j] * mask[b, g * taps + k, oy, ox] * sample
                    rows.append(value)
    return torch.stack(rows).view(batch, out_channels, out_h, out_w)


def random_case(stride, padding, dilation, seed=0, groups=2):
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width, out_channels, kernel = 1, 4, 5, 6, 3, 3
    out_h = (height + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1

    def randn(*shape, scale=1.0):
        tensor = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return tensor.requires_grad_()

    # Offsets up to ~2 px so taps cross pixels and leave the image; masks anywhere in (0, 1).
    return dict(
        input=randn(batch, channels, height, width),
        offset=randn(batch, 2 * groups * kernel * kernel, out_h, out_w, scale=1.5),
        mask=torch.rand(batch, groups * kernel * kernel, out_h, out_w, generator=generator,
                        dtype=torch.float64).requires_grad_(),
        weight=randn(out_channels, channels, kernel, kernel),
        bias=randn(out_channels),
    )


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_matches_a_per_location_loop_forward_and_backward(stride, padding, dilation):
    case = random_case(stride, padding, dilation)
    names = list(case)
    fast = deform_conv2d_reference(*case.values(), stride=stride, padding=padding, dilation=dilation)
    slow = loop_deform_conv(*case.values(), stride, padding, dilation)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast_grads = torch.autograd.grad(fast, list(case.values()), upstream)
    slow_grads = torch.autograd.grad(slow, list(case.values()), upstream)
    for name, fast_grad, slow_grad in zip(names, fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-5, msg=name)


def test_zero_offsets_and_unit_masks_are_a_plain_convolution():
    case = random_case(1, 1, 1)
    with torch.no_grad():
        case["offset"].zero_()
        case["mask"].fill_(1.0)
    out = deform_conv2d_reference(*case.values(), padding=1)
    expected = torch.nn.functional.conv2d(case["input"], case["weight"], case["bias"], padding=1)
    torch.testing.assert_close(out, expected)


def test_layer_starts_as_half_weighted_convolution_and_learns_offsets():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(8, 4, offset_groups=2)
    features, guide = torch.randn(2, 8, 7, 7), torch.randn(2, 8, 7, 7)
    out = layer(features, guide)
    expected = 0.5 * torch.nn.functional.conv2d(features, layer.weight, None, padding=1) + layer.bias[:, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert layer.conv_offset_mask.weight.grad.abs().sum() > 0  # offsets and masks get a gradient


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(_torchvision_deform_conv2d() is None, reason="torchvision is not importable")
def test_torchvision_kernel_agrees_with_the_pure_path_on_cuda():
    case = {key: value.detach().cuda().requires_grad_() for key, value in random_case(1, 1, 1).items()}
    fused = modulated_deform_conv2d(*case.values(), padding=1)
    pure = modulated_deform_conv2d(*case.values(), padding=1, use_torchvision=False)
    torch.testing.assert_close(fused, pure, rtol=1e-5, atol=1e-5)
    fused_grads = torch.autograd.grad(fused.sum(), list(case.values()))
    pure_grads = torch.autograd.grad(pure.sum(), list(case.values()))
    for fused_grad, pure_grad in zip(fused_grads, pure_grads, strict=True):
        torch.testing.assert_close(fused_grad, pure_grad, rtol=1e-5, atol=1e-5)

"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) in pure PyTorch, for FaPN.

Each output location samples its kernel taps at learned fractional offsets (bilinear
interpolation, zero outside the image) and scales each tap by a learned mask in [0, 1].
Tensor layouts follow torchvision's `deform_conv2d`: `offset` is (B, 2*G*kh*kw, Ho, Wo) holding
(dy, dx) per group and tap, `mask` is (B, G*kh*kw, Ho, Wo), with G offset groups splitting the
input channels. torchvision's fused kernel is used instead on CUDA when it imports (its CPU
wheel does not import beside this project's CPU torch); both give the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trashseg.models.base import full_precision


def _torchvision_deform_conv2d():
    try:
        from torchvision.ops import deform_conv2d
    except Exception:  # absent, or a wheel built against another torch
        return None
    return deform_conv2d


def modulated_deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    use_torchvision: bool = True,
) -> torch.Tensor:
    """(B, C, H, W) -> (B, O, Ho, Wo); `weight` is (O, C, kh, kw) as for nn.Conv2d (groups=1)."""
    if use_torchvision and input.is_cuda:
        fused = _torchvision_deform_conv2d()
        if fused is not None:
            return fused(input, offset, weight, bias, stride=stride, padding=padding,
                         dilation=dilation, mask=mask)
    return deform_conv2d_reference(
        input, offset, mask, weight, bias, stride=stride, padding=padding, dilation=dilation
    )


def deform_conv2d_reference(input, offset, mask, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """The pure-PyTorch path: one grid_sample gathers every tap of every location, then a matmul."""
    batch, channels, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    groups = offset.shape[1] // (2 * taps)
    out_h, out_w = offset.shape[-2:]
    # Sampling positions in input pixels: the regular grid plus each tap's learned offset.
    base_y = torch.arange(out_h, device=input.device, dtype=input.dtype) * stride - padding
    base_x = torch.arange(out_w, device=input.device, dtype=input.dtype) * stride - padding
    tap_y = (torch.arange(kernel_h, device=input.device, dtype=input.dtype) * dilation).repeat_interleave(kernel_w)
    tap_x = (torch.arange(kernel_w, device=input.device, dtype=input.dtype) * dilation).repeat(kernel_h)
    offset = offset.view(batch, groups, taps, 2, out_h, out_w)
    y = base_y[None, None, None, :, None] + tap_y[None, None, :, None, None] + offset[:, :, :, 0]
    x = base_x[None, None, None, None, :] + tap_x[None, None, :, None, None] + offset[:, :, :, 1]
    # grid_sample with align_corners=False places pixel i's centre at (2i + 1) / size - 1, so this
    # normalisation is exact for any size (even 1) and padding_mode="zeros" is DCN's zero outside.
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    grid = grid.view(batch * groups, taps * out_h, out_w, 2)
    sampled = nn.functional.grid_sample(
        input.reshape(batch * groups, channels // groups, height, width),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*G, C/G, taps*Ho, Wo)
    sampled = sampled.view(batch, groups, channels // groups, taps, out_h * out_w)
    sampled = sampled * mask.view(batch, groups, 1, taps, out_h * out_w)
    columns = sampled.reshape(batch, channels * taps, out_h * out_w)  # (C, tap) order, as weight
    output = torch.matmul(weight.reshape(out_channels, channels * taps), columns)
    if bias is not None:
        output = output + bias[None, :, None]
    return output.view(batch, out_channels, out_h, out_w)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer whose offsets and masks come from a 3x3 conv over a separate guide tensor
    (as FaPN's alignment module feeds it); that conv starts at zero, so the layer starts as a
    plain convolution with every tap weighted 0.5 (DCNv2's initialisation)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, *, padding=1, offset_groups=8,
                 guide_channels=None):
        super().__init__()
        if in_channels % offset_groups:
            raise ValueError(f"{in_channels} input channels do not split into {offset_groups} offset groups")
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        taps = kernel_size * kernel_size
        self.conv_offset_mask = nn.Conv2d(
            guide_channels or in_channels, 3 * offset_groups * taps, kernel_size, padding=padding
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default init for the main weights; zero offsets and logits for the guide.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        offset_y_x, mask_logits = self.conv_offset_mask(guide).split(
            [2 * self.conv_offset_mask.out_channels // 3, self.conv_offset_mask.out_channels // 3], dim=1
        )
        # Sampling in float32 under autocast: fractional offsets need the mantissa.
        with full_precision(features.device):
            return modulated_deform_conv2d(
                features.float(), offset_y_x.float(), mask_logits.float().sigmoid(),
                self.weight.float(), self.bias.float(), padding=self.padding,
            )

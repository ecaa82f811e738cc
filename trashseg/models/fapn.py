"""FaPN (Huang et al. 2021, arXiv 2108.07058): a feature-aligned pyramid as Mask2Former's pixel
decoder, as in SeMask-FaPN (Picsart-AI-Research/SeMask-Segmentation, SeMask-FAPN's
`PixelFANDecoder`), in place of the multi-scale deformable-attention decoder.

Top-down over the backbone's four maps (strides 32 -> 4), each finer level is
  lateral  = FSM(c_i): channel attention from global pooling re-weights c_i, then a 1x1 conv;
  aligned  = FAM(lateral, up(p_{i+1})): offsets learned from [lateral, 2 * upsampled coarse map]
             drive a modulated deformable 3x3 conv (DCNv2, 8 offset groups) that resamples the
             upsampled map onto the lateral's geometry; the result is added to the lateral;
  p_i      = ReLU(GN(conv3x3(aligned))).
The three coarsest outputs feed the masked-attention decoder; a 3x3 conv of the finest gives the
per-pixel mask embeddings. (SeMask-FaPN's code defines the FSM but feeds a plain 1x1 lateral;
we use the FSM as the FaPN paper does.)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoderOutput

from trashseg.models.deform_conv import ModulatedDeformConv2d

_OFFSET_GROUPS = 8  # FaPN / SeMask-FaPN: DCN(..., deformable_groups=8)
_LEVELS_FOR_DECODER = 3  # Mask2Former's masked attention cycles over strides 32, 16, 8


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        _group_norm(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class FeatureSelection(nn.Module):
    """FaPN's FSM: keeps the channels that carry detail, suppresses redundant ones."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.attention = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.projection = _conv_norm(in_channels, out_channels, 1, relu=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.attention(features.mean(dim=(2, 3), keepdim=True)).sigmoid()
        return self.projection(features + features * weights)


class FeatureAlignment(nn.Module):
    """FaPN's FAM: learned offsets align the upsampled coarse map to the lateral map."""

    def __init__(self, channels: int):
        super().__init__()
        self.offset = _conv_norm(2 * channels, channels, 1, relu=False)
        offset_groups = _OFFSET_GROUPS if channels % _OFFSET_GROUPS == 0 else 1
        self.deform = ModulatedDeformConv2d(channels, channels, 3, padding=1, offset_groups=offset_groups)

    def forward(self, lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        upsampled = nn.functional.interpolate(
            coarse, size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        # The factor 2 follows FaPN's code: it scales the coarse map against the lateral.
        guide = self.offset(torch.cat([lateral, 2 * upsampled], dim=1))
        return lateral + nn.functional.relu(self.deform(upsampled, guide)).to(lateral.dtype)


class FaPNPixelDecoder(nn.Module):
    """Drop-in for transformers' Mask2FormerPixelDecoder: same inputs, same output type."""

    def __init__(self, config: Mask2FormerConfig, feature_channels: list[int]):
        super().__init__()
        width = config.feature_size
        # Ordered coarse to fine, as the top-down pass visits them.
        channels = list(feature_channels)[::-1]
        self.top = _conv_norm(channels[0], width, 3, relu=True)
        self.selections = nn.ModuleList(FeatureSelection(c, width) for c in channels[1:])
        self.alignments = nn.ModuleList(FeatureAlignment(width) for _ in channels[1:])
        self.outputs = nn.ModuleList(_conv_norm(width, width, 3, relu=True) for _ in channels[1:])
        self.mask_projection = nn.Conv2d(width, config.mask_feature_size, 3, padding=1)

    def forward(self, features, output_hidden_states: bool = False, **kwargs) -> Mask2FormerPixelDecoderOutput:
        coarse_to_fine = list(features)[::-1]
        level = self.top(coarse_to_fine[0])
        levels = [level]
        for feature, select, align, output in zip(
            coarse_to_fine[1:], self.selections, self.alignments, self.outputs, strict=True
        ):
            level = output(align(select(feature), level))
            levels.append(level)
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(level),
            multi_scale_features=tuple(levels[:_LEVELS_FOR_DECODER]),
        )

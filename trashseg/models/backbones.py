"""Backbone configs (Swin, ConvNeXt), apart from the heads that sit on them.

Published sizes live here; per-architecture choices such as the drop-path rate are passed in
from the architecture table (`trashseg/models/__init__.py`). DiNAT, written in trashseg, has
its own module (`dinat.py`). Tiny sizes never use stochastic depth.
"""

from __future__ import annotations

from transformers import ConvNextConfig, SwinConfig

STAGES = ["stage1", "stage2", "stage3", "stage4"]

# Published Swin sizes (Liu et al. 2021); B and L use the 384-pretraining window of 12.
SWIN_SIZES = {
    "t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12),
    "l": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
}
TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4)

# Published ConvNeXt sizes (Liu et al. 2022).
CONVNEXT_SIZES = {
    "t": dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3]),
    "b": dict(hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3]),
    "l": dict(hidden_sizes=[192, 384, 768, 1536], depths=[3, 3, 27, 3]),
}
TINY_CONVNEXT = dict(hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1])


def swin_backbone_config(variant: str, *, tiny: bool, drop_path_rate: float) -> SwinConfig:
    size = TINY_SWIN if tiny else SWIN_SIZES[variant]
    return SwinConfig(**size, drop_path_rate=0.0 if tiny else drop_path_rate, out_features=STAGES)


def convnext_backbone_config(variant: str, *, tiny: bool, drop_path_rate: float) -> ConvNextConfig:
    size = TINY_CONVNEXT if tiny else CONVNEXT_SIZES[variant]
    return ConvNextConfig(**size, drop_path_rate=0.0 if tiny else drop_path_rate, out_features=STAGES)

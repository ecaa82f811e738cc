"""DiNAT (Hassani & Shi 2022): a hierarchical transformer of alternating local and dilated
neighbourhood attention, written here on natten 0.21 and plugged into Mask2Former as a
transformers backbone (config model type ``trashseg_dinat``, registered with AutoBackbone).

transformers' own DiNAT calls natten functions that natten 0.21 removed, hence this module.
Parameter names mirror transformers' DiNAT so that published DiNAT checkpoints (transformers
format, e.g. ``shi-labs/dinat-large-11x11-in22k-in1k-384``) load by key where shapes match.

Relative position bias: DiNAT was published with a learned relative position bias (``rpb``)
added to every attention logit. natten 0.21's fused kernels have no such input, so this
backbone has none and the ``rpb`` tensors of a checkpoint are skipped (and reported). A
pretrained DiNAT loaded here therefore attends without the positional preference it learned:
its features are degraded until fine-tuning adapts the other weights, so expect to need more
fine-tuning than the published Mask2Former-DiNAT recipe and not quite its accuracy; random-init
training is unaffected (the network simply has no position bias, relying on the convolutional
stem and downsamplers for position information).
"""

from __future__ import annotations

import json
import logging

import torch
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    DinatConfig,
    Mask2FormerConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from trashseg.errors import ConfigError
from trashseg.models.neighborhood_attention import neighborhood_attention

log = logging.getLogger(__name__)

# DiNAT-L with 11x11 kernels and the dilations of the published Mask2Former/OneFormer configs
# for 640-pixel crops; where a map is smaller than kernel * dilation, DinatLayer pads it.
DINAT_LARGE = dict(
    embed_dim=192,
    depths=[3, 4, 18, 5],
    num_heads=[6, 12, 24, 48],
    kernel_size=11,
    mlp_ratio=2.0,
    dilations=[
        [1, 20, 1],
        [1, 5, 1, 10],
        [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5],
        [1, 2, 1, 2, 1],
    ],
)
# One layer per stage, but still one dilated layer (stage 1) so the tiny model exercises dilation.
DINAT_TINY = dict(
    embed_dim=32,
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 4, 8],
    kernel_size=3,
    mlp_ratio=2.0,
    dilations=[[2], [1], [1], [1]],
)
_STAGES = ["stage1", "stage2", "stage3", "stage4"]


class TrashsegDinatConfig(DinatConfig):
    """DiNAT's configuration, under its own model type so AutoBackbone builds this backbone."""

    model_type = "trashseg_dinat"


def dinat_backbone_config(*, tiny: bool, drop_path_rate: float = 0.0) -> TrashsegDinatConfig:
    """DiNAT-L (or its tiny twin); the drop-path rate comes from the architecture table."""
    size = DINAT_TINY if tiny else DINAT_LARGE
    return TrashsegDinatConfig(**size, drop_path_rate=0.0 if tiny else drop_path_rate, out_features=_STAGES)


class DinatPatchEmbeddings(nn.Module):
    """Two stride-2 3x3 convolutions: the overlapping 4x downsampling stem."""

    def __init__(self, config: DinatConfig):
        super().__init__()
        self.projection = nn.Sequential(
            nn.Conv2d(config.num_channels, config.embed_dim // 2, 3, stride=2, padding=1),
            nn.Conv2d(config.embed_dim // 2, config.embed_dim, 3, stride=2, padding=1),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).permute(0, 2, 3, 1)  # channels last


class DinatEmbeddings(nn.Module):
    def __init__(self, config: DinatConfig):
        super().__init__()
        self.patch_embeddings = DinatPatchEmbeddings(config)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.patch_embeddings(pixel_values)))


class NeighborhoodSelfAttention(nn.Module):
    def __init__(self, config: DinatConfig, dim: int, num_heads: int, dilation: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"DiNAT width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.kernel_size = config.kernel_size
        self.dilation = dilation
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = hidden_states.shape

        def heads(projection: nn.Linear) -> torch.Tensor:
            return projection(hidden_states).view(batch, height, width, self.num_heads, -1)

        attended = neighborhood_attention(
            heads(self.query), heads(self.key), heads(self.value), self.kernel_size, self.dilation
        )
        return attended.reshape(batch, height, width, dim)


class NeighborhoodAttentionOutput(nn.Module):
    def __init__(self, config: DinatConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class NeighborhoodAttentionModule(nn.Module):
    def __init__(self, config: DinatConfig, dim: int, num_heads: int, dilation: int):
        super().__init__()
        self.self = NeighborhoodSelfAttention(config, dim, num_heads, dilation)
        self.output = NeighborhoodAttentionOutput(config, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states))


class DinatIntermediate(nn.Module):
    def __init__(self, config: DinatConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, int(config.mlp_ratio * dim))
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states))


class DinatOutput(nn.Module):
    def __init__(self, config: DinatConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(int(config.mlp_ratio * dim), dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability `rate`."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(
            1.0 - self.rate
        )
        return branch * keep / (1.0 - self.rate)


class DinatLayer(nn.Module):
    def __init__(self, config: DinatConfig, dim: int, num_heads: int, dilation: int, drop_path):
        super().__init__()
        self.window_size = config.kernel_size * dilation
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = NeighborhoodAttentionModule(config, dim, num_heads, dilation)
        self.drop_path = DropPath(drop_path)
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.intermediate = DinatIntermediate(config, dim)
        self.output = DinatOutput(config, dim)
        self.layer_scale_parameters = (
            nn.Parameter(config.layer_scale_init_value * torch.ones(2, dim))
            if config.layer_scale_init_value > 0
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = hidden_states.shape
        normed = self.layernorm_before(hidden_states)
        # Maps smaller than kernel_size * dilation are zero-padded at the bottom/right, as the
        # original DiNAT does, so any input size works; the padding is cropped off again.
        pad_bottom = max(0, self.window_size - height)
        pad_right = max(0, self.window_size - width)
        if pad_bottom or pad_right:
            normed = nn.functional.pad(normed, (0, 0, 0, pad_right, 0, pad_bottom))
        attended = self.attention(normed)[:, :height, :width]
        if self.layer_scale_parameters is not None:
            attended = self.layer_scale_parameters[0] * attended
        hidden_states = hidden_states + self.drop_path(attended)
        feed_forward_input = self.layernorm_after(hidden_states)
        feed_forward = self.output(self.intermediate(feed_forward_input))
        if self.layer_scale_parameters is not None:
            feed_forward = self.layer_scale_parameters[1] * feed_forward
        return hidden_states + self.drop_path(feed_forward)


class DinatDownsampler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        reduced = self.reduction(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(reduced)


class DinatStage(nn.Module):
    def __init__(self, config, dim, depth, num_heads, dilations, drop_paths, downsample: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            DinatLayer(config, dim, num_heads, dilations[i], drop_paths[i]) for i in range(depth)
        )
        self.downsample = DinatDownsampler(dim) if downsample else None


class DinatEncoder(nn.Module):
    def __init__(self, config: DinatConfig):
        super().__init__()
        # Stochastic depth grows linearly with depth (plain floats: this also runs on "meta").
        total = sum(config.depths)
        drop_paths = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        levels, first = [], 0
        for index, depth in enumerate(config.depths):
            levels.append(
                DinatStage(
                    config,
                    dim=int(config.embed_dim * 2**index),
                    depth=depth,
                    num_heads=config.num_heads[index],
                    dilations=config.dilations[index],
                    drop_paths=drop_paths[first : first + depth],
                    downsample=index < len(config.depths) - 1,
                )
            )
            first += depth
        self.levels = nn.ModuleList(levels)


class DinatBackbone(BackboneMixin, PreTrainedModel):
    """DiNAT feature pyramid (strides 4, 8, 16, 32) for Mask2Former's pixel decoder."""

    config_class = TrashsegDinatConfig
    main_input_name = "pixel_values"

    def __init__(self, config: TrashsegDinatConfig):
        super().__init__(config)
        for index, depth in enumerate(config.depths):
            if len(config.dilations[index]) != depth:
                raise ConfigError(
                    f"DiNAT stage {index + 1} has depth {depth} but {len(config.dilations[index])} "
                    f"dilations {config.dilations[index]}; give one dilation per layer"
                )
        self.embeddings = DinatEmbeddings(config)
        self.encoder = DinatEncoder(config)
        self.num_features = [config.embed_dim] + [
            int(config.embed_dim * 2**index) for index in range(len(config.depths))
        ]
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(width)
                for stage, width in zip(self.out_features, self.channels, strict=True)
            }
        )
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BackboneOutput:
        hidden_states = self.embeddings(pixel_values)
        feature_maps = []
        for stage_name, level in zip(self.stage_names[1:], self.encoder.levels, strict=True):
            for layer in level.layers:
                hidden_states = layer(hidden_states)
            if stage_name in self.out_features:
                normed = self.hidden_states_norms[stage_name](hidden_states)
                feature_maps.append(normed.permute(0, 3, 1, 2).contiguous())
            if level.downsample is not None:
                hidden_states = level.downsample(hidden_states)
        return BackboneOutput(feature_maps=tuple(feature_maps))


AutoConfig.register(TrashsegDinatConfig.model_type, TrashsegDinatConfig, exist_ok=True)
AutoBackbone.register(TrashsegDinatConfig, DinatBackbone, exist_ok=True)
# Mask2Former warns about any backbone outside its list; this one was written for it.
if TrashsegDinatConfig.model_type not in Mask2FormerConfig.backbones_supported:
    Mask2FormerConfig.backbones_supported = [
        *Mask2FormerConfig.backbones_supported,
        TrashsegDinatConfig.model_type,
    ]


def is_dinat_checkpoint(pretrained: str) -> bool:
    """Whether `pretrained` holds a plain DiNAT checkpoint (classifier or backbone)."""
    return AutoConfig.from_pretrained(pretrained).model_type == "dinat"


def load_dinat_weights(backbone: DinatBackbone, pretrained: str) -> set[str]:
    """Copy a transformers DiNAT checkpoint's weights into `backbone` by name where shapes match.

    Relative position biases (no natten 0.21 equivalent) and tensors without a counterpart are
    skipped and logged; a checkpoint providing under half of the backbone's tensors is refused.
    """
    weights = _read_weights(pretrained)
    own = backbone.state_dict()
    loaded, skipped = {}, []
    for key, tensor in weights.items():
        name = key.removeprefix("dinat.")
        if name in own and own[name].shape == tensor.shape:
            loaded[name] = tensor
        else:
            skipped.append(key)
    if len(loaded) < len(own) / 2:
        raise ConfigError(
            f"DiNAT checkpoint {pretrained!r} matches only {len(loaded)} of this backbone's "
            f"{len(own)} tensors by name and shape; expected a transformers DiNAT checkpoint "
            "(DinatModel/DinatBackbone/DinatForImageClassification) of the same size."
        )
    backbone.load_state_dict(loaded, strict=False)
    not_loaded = sorted(set(own) - set(loaded))
    relative_biases = [key for key in skipped if key.endswith(".rpb")]
    log.warning(
        "DiNAT weights from %s: loaded %d of %d backbone tensors; skipped %d relative position "
        "biases (unsupported by natten 0.21) and %s; left at random init: %s",
        pretrained,
        len(loaded),
        len(own),
        len(relative_biases),
        json.dumps(sorted(set(skipped) - set(relative_biases))[:20]),
        json.dumps(not_loaded[:20]),
    )
    return set(loaded)


def _read_weights(pretrained: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from model.safetensors, or from the older pytorch_model.bin that
    some published DiNAT checkpoints still ship."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    safetensors_file = cached_file(
        pretrained, "model.safetensors", _raise_exceptions_for_missing_entries=False
    )
    if safetensors_file is not None:
        return load_file(safetensors_file)
    torch_file = cached_file(
        pretrained, "pytorch_model.bin", _raise_exceptions_for_missing_entries=False
    )
    if torch_file is None:
        raise ConfigError(
            f"DiNAT checkpoint {pretrained!r} has neither model.safetensors nor pytorch_model.bin; "
            "expected a transformers checkpoint folder or hub id."
        )
    return torch.load(torch_file, map_location="cpu", weights_only=True)

"""SeMask (Jain et al. 2021, arXiv 2112.12782): a Swin encoder with a semantic layer after every
stage, under the Mask2Former head in semantic mode, optionally with FaPN as its pixel decoder.

Design and hyperparameters follow the authors' SeMask-Mask2Former code
(Picsart-AI-Research/SeMask-Segmentation, `mask2former/modeling/backbone/semask_swin.py`):
- After the Swin blocks of each of the 4 stages, and before patch merging (so the next stage
  and the pixel decoder both see the reweighted features), one semantic layer: LayerNorm, then
  `NUM_SEM_BLOCKS = 1` semantic attention block inside non-overlapping windows
  (`SEM_WINDOW_SIZE` = the Swin window: 7 for T, 12 for B/L).
- Semantic attention: per token, a linear map to K class scores (`mlp_cls_q`, the stage's
  semantic prior map) and a second one (`mlp_cls_k`); their product over the window's tokens,
  softmaxed, mixes value projections (`mlp_v`) that a projection (`mlp_res`, dropout 0.1) scales
  by a learned `gamma`, initialised at 0 so a pretrained Swin starts unchanged, and adds to the
  normalised features.
- The lightweight semantic decoder sums the four prior maps upsampled to stride 4 (no
  parameters) and upsamples to the input; its pixel cross entropy is added to Mask2Former's loss
  with weight `CATE_WEIGHT = 0.4` (configurable: `semantic_loss_weight` in the model config).
  Priors are supervised during training only; predictions come from Mask2Former's queries.
One deliberate difference: the authors' code zero-initialises `mlp_res` as well as `gamma`,
which leaves both without gradient forever (each is the other's only path), so the reweighting
never switches on; here `mlp_res` keeps transformers' random init, so gamma learns.
(For ADE20K's 150 classes the authors' code attends globally in stage 4; for every other
dataset all stages use windows, as here.)
Parameter names of the Swin part are transformers' SwinBackbone names, so Swin and
Mask2Former-Swin checkpoints load by key (`load_swin_weights`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, Mask2FormerConfig, SwinConfig, SwinModel
from transformers.modeling_outputs import BackboneOutput
from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentation
from transformers.models.swin.modeling_swin import SwinBackbone, window_partition, window_reverse

from trashseg.errors import ConfigError
from trashseg.models.backbones import SWIN_SIZES, TINY_SWIN
from trashseg.models.base import cross_entropy, resize_to
from trashseg.models.fapn import FaPNPixelDecoder
from trashseg.models.mask2former import Mask2FormerSegmentation, mask2former_config

log = logging.getLogger(__name__)

SEMANTIC_LOSS_WEIGHT = 0.4  # CATE_WEIGHT in the authors' config.py
NUM_SEMANTIC_BLOCKS = 1  # NUM_SEM_BLOCKS in every published SeMask config
_SEMANTIC_DROPOUT = 0.1


class TrashsegSeMaskSwinConfig(SwinConfig):
    """Swin's configuration plus `num_semantic_classes`, `semantic_window_size` and
    `num_semantic_blocks`, under its own model type so AutoBackbone builds the SeMask encoder."""

    model_type = "trashseg_semask_swin"


def semask_swin_backbone_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> TrashsegSeMaskSwinConfig:
    size = TINY_SWIN if tiny else SWIN_SIZES[variant]
    return TrashsegSeMaskSwinConfig(
        **size,
        drop_path_rate=0.0 if tiny else drop_path_rate,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        num_semantic_classes=num_classes,
        semantic_window_size=size["window_size"],  # SEM_WINDOW_SIZE = WINDOW_SIZE in their configs
        num_semantic_blocks=NUM_SEMANTIC_BLOCKS,
    )


class SemanticAttention(nn.Module):
    """Class-score attention over a window's tokens; returns (prior scores, reweighted tokens)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(_SEMANTIC_DROPOUT)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        priors = self.mlp_cls_q(tokens)  # (windows, tokens, K)
        # Unscaled, as in the authors' code: token affinity through their class scores.
        affinity = (priors @ self.mlp_cls_k(tokens).transpose(-2, -1)).softmax(dim=-1)
        mixed = self.dropout(self.mlp_res(affinity @ self.mlp_v(tokens)))
        return priors, tokens + self.gamma * mixed


class SemanticLayer(nn.Module):
    """LayerNorm plus semantic attention in non-overlapping windows of one stage's map."""

    def __init__(self, dim: int, num_classes: int, window_size: int, num_blocks: int):
        super().__init__()
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(SemanticAttention(dim, num_classes) for _ in range(num_blocks))

    def forward(self, hidden_states: torch.Tensor, dims: tuple[int, int]):
        """(B, H*W, C) tokens -> (priors (B, K, H, W), tokens (B, H*W, C))."""
        height, width = dims
        batch, _, channels = hidden_states.shape
        grid = self.norm(hidden_states).view(batch, height, width, channels)
        # Zero padding to whole windows, as the authors do; padded tokens are cropped off again.
        window = min(self.window_size, height, width)
        pad_bottom, pad_right = -height % window, -width % window
        grid = nn.functional.pad(grid, (0, 0, 0, pad_right, 0, pad_bottom))
        tokens = window_partition(grid, window).view(-1, window * window, channels)
        for block in self.blocks:
            priors, tokens = block(tokens)
        padded = (height + pad_bottom, width + pad_right)
        tokens = window_reverse(tokens.view(-1, window, window, channels), window, *padded)
        priors = window_reverse(priors.view(-1, window, window, priors.shape[-1]), window, *padded)
        tokens = tokens[:, :height, :width].reshape(batch, height * width, channels)
        priors = priors[:, :height, :width].permute(0, 3, 1, 2).contiguous()
        return priors, tokens


@dataclass
class SeMaskBackboneOutput(BackboneOutput):
    """Backbone feature maps plus each stage's semantic prior map (B, K, H_i, W_i)."""

    semantic_maps: tuple[torch.Tensor, ...] | None = None


class SeMaskSwinBackbone(SwinBackbone):
    """transformers' SwinBackbone with a SeMask semantic layer closing each stage."""

    config_class = TrashsegSeMaskSwinConfig

    def __init__(self, config: TrashsegSeMaskSwinConfig):
        super().__init__(config)
        self.semantic_layers = nn.ModuleList(
            SemanticLayer(
                int(config.embed_dim * 2**index),
                config.num_semantic_classes,
                config.semantic_window_size,
                config.num_semantic_blocks,
            )
            for index in range(len(config.depths))
        )

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> SeMaskBackboneOutput:
        hidden_states, dims = self.swin.embeddings(pixel_values)
        feature_maps, semantic_maps = [], []
        stages = zip(self.stage_names[1:], self.swin.encoder.layers, self.semantic_layers, strict=True)
        for stage_name, stage, semantic_layer in stages:
            for block in stage.blocks:
                # always_partition keeps shifted windows at every size, as SwinBackbone does.
                hidden_states, _ = block(hidden_states, dims, always_partition=True)
            priors, hidden_states = semantic_layer(hidden_states, dims)
            semantic_maps.append(priors)
            if stage_name in self.out_features:
                normed = self.hidden_states_norms[stage_name](hidden_states)
                feature_maps.append(normed.view(-1, *dims, normed.shape[-1]).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                hidden_states = stage.downsample(hidden_states, dims)
                dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
        return SeMaskBackboneOutput(feature_maps=tuple(feature_maps), semantic_maps=tuple(semantic_maps))


AutoConfig.register(TrashsegSeMaskSwinConfig.model_type, TrashsegSeMaskSwinConfig, exist_ok=True)
AutoBackbone.register(TrashsegSeMaskSwinConfig, SeMaskSwinBackbone, exist_ok=True)
if TrashsegSeMaskSwinConfig.model_type not in Mask2FormerConfig.backbones_supported:
    Mask2FormerConfig.backbones_supported = [
        *Mask2FormerConfig.backbones_supported,
        TrashsegSeMaskSwinConfig.model_type,
    ]


def mask2former_semask_config(
    pixel_decoder: str, variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float,
    semantic_loss_weight: float = SEMANTIC_LOSS_WEIGHT,
) -> Mask2FormerConfig:
    """Mask2Former on SeMask-Swin; `pixel_decoder` is "msdeformattn" (Mask2Former's own) or "fapn"."""
    if pixel_decoder not in ("msdeformattn", "fapn"):
        raise ConfigError(f"pixel_decoder is {pixel_decoder!r}; expected 'msdeformattn' or 'fapn'")
    backbone = semask_swin_backbone_config(variant, num_classes, tiny=tiny, drop_path_rate=drop_path_rate)
    config = mask2former_config(backbone, num_classes, tiny=tiny)
    config.pixel_decoder = pixel_decoder
    config.semantic_loss_weight = semantic_loss_weight
    return config


class SeMaskMask2FormerNetwork(Mask2FormerForUniversalSegmentation):
    """Mask2Former whose pixel decoder is FaPN when `config.pixel_decoder == "fapn"`."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        if getattr(config, "pixel_decoder", "msdeformattn") == "fapn":
            pixel_level = self.model.pixel_level_module
            pixel_level.decoder = FaPNPixelDecoder(config, pixel_level.encoder.channels)


class SeMaskMask2FormerSegmentation(Mask2FormerSegmentation):
    """Mask2Former's loss plus SeMask's semantic-prior loss; Mask2Former's predictions."""

    network_class = SeMaskMask2FormerNetwork

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        captured = []
        encoder = self.network.model.pixel_level_module.encoder
        hook = encoder.register_forward_hook(lambda _m, _i, output: captured.append(output.semantic_maps))
        try:
            loss = super()._loss(images, masks)
        finally:
            hook.remove()
        weight = self.network.config.semantic_loss_weight
        return loss + weight * cross_entropy(semantic_decoder(captured[-1], images), masks)


def semantic_decoder(semantic_maps, images: torch.Tensor) -> torch.Tensor:
    """SeMask's parameter-free semantic decoder: prior maps summed at stride 4, then upsampled to
    the images' size (bilinear; the authors use align_corners=True, we use this project's False)."""
    finest = semantic_maps[0]
    total = finest.float()
    for coarse in semantic_maps[1:]:
        total = total + resize_to(coarse.float(), finest)
    return resize_to(total, images)


def is_semask_checkpoint(pretrained: str) -> bool:
    """Whether `pretrained` is a SeMask-Mask2Former checkpoint (else a Swin or Mask2Former one)."""
    config = AutoConfig.from_pretrained(pretrained)
    backbone = getattr(config, "backbone_config", None)
    return getattr(backbone, "model_type", None) == TrashsegSeMaskSwinConfig.model_type


def load_swin_weights(network: SeMaskMask2FormerNetwork, pretrained: str) -> set[str]:
    """Fill `network` from a transformers Swin (SwinModel/SwinBackbone/classifier) or
    Mask2Former-Swin checkpoint by key where shapes match; semantic layers, and whatever else the
    checkpoint lacks (the whole head for a plain Swin), keep their fresh init.

    A checkpoint filling under half of the Swin encoder's tensors is refused as the wrong model.
    """
    weights = _checkpoint_state(pretrained)
    own = network.state_dict()
    loaded = {k: t for k, t in weights.items() if k in own and own[k].shape == t.shape}
    skipped = sorted(set(weights) - set(loaded))
    encoder_keys = [k for k in own if k.startswith(_ENCODER) and ".semantic_layers." not in k]
    encoder_loaded = sum(k in loaded for k in encoder_keys)
    if encoder_loaded < len(encoder_keys) / 2:
        raise ConfigError(
            f"checkpoint {pretrained!r} fills only {encoder_loaded} of the {len(encoder_keys)} Swin "
            "encoder tensors by name and shape; expected a transformers Swin or Mask2Former-Swin "
            "checkpoint of the same Swin size."
        )
    network.load_state_dict(loaded, strict=False)
    not_loaded = sorted(set(own) - set(loaded))
    semantic = [k for k in not_loaded if ".semantic_layers." in k]
    log.warning(
        "SeMask weights from %s: loaded %d of %d tensors (%d of %d Swin encoder tensors); %d "
        "semantic-layer tensors start fresh; skipped from the checkpoint: %s; also left at init: %s",
        pretrained, len(loaded), len(own), encoder_loaded, len(encoder_keys), len(semantic),
        json.dumps(skipped[:20]), json.dumps([k for k in not_loaded if k not in semantic][:20]),
    )
    return set(loaded)


_ENCODER = "model.pixel_level_module.encoder."


def _checkpoint_state(pretrained: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors named as in this network. transformers loads them, because files
    keep the published key names (e.g. `attention.self.query`) that it converts on load."""
    model_type = AutoConfig.from_pretrained(pretrained).model_type
    if model_type == "mask2former":
        return Mask2FormerForUniversalSegmentation.from_pretrained(pretrained).state_dict()
    if model_type == "swin":
        swin = SwinModel.from_pretrained(pretrained, add_pooling_layer=False)
        return {f"{_ENCODER}swin.{key}": tensor for key, tensor in swin.state_dict().items()}
    raise ConfigError(
        f"checkpoint {pretrained!r} is a {model_type!r} model; a SeMask model starts from a "
        "SeMask-Mask2Former, Mask2Former-Swin or Swin checkpoint (transformers format)."
    )

"""MaskDINO (Li et al. 2023, arXiv 2206.02777) in semantic mode.

A Swin backbone and transformers' Mask2Former multi-scale deformable-attention pixel encoder feed a
DINO-style decoder: the top-scoring encoder tokens become the initial content queries and
reference boxes (query selection), each decoder layer refines the boxes through deformable
cross-attention, and every query predicts a class, a box and a mask (its mask embedding dotted
with the per-pixel embeddings). In training, noised ground-truth labels and boxes are added as
denoising queries behind an attention mask. Semantic scores come from class x mask as in the
Mask2Former wrapper. Losses are in `maskdino_loss.py`.

Hyperparameters follow the authors' ADE20K semantic config (IDEA-Research/MaskDINO,
configs/ade20k/semantic-segmentation/maskdino_R50_bs16_160k_steplr.yaml): hidden 256, 8 heads,
6 encoder layers with feed-forward 1024, 9 decoder layers (+ the prediction on the initial
queries) with feed-forward 2048, 100 queries, DN_NUM 100, loss weights class 4 / mask 5 / dice 5,
no-object 0.1. That config sets TWO_STAGE False; we use the paper's query selection (its
two-stage setting, used for COCO), which the paper presents as a core part of the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers import initialization as init
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as MultiscaleDeformableAttention,
)
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelLevelModule,
    Mask2FormerPreTrainedModel,
)

from trashseg.models.backbones import swin_backbone_config
from trashseg.models.base import IGNORE_INDEX, SegmentationModel
from trashseg.models.mask2former import _FULL_DECODER as M2F_FULL_DECODER
from trashseg.models.mask2former import _TINY_DECODER as M2F_TINY_DECODER
from trashseg.models.mask2former import semantic_log_probs, semantic_targets
from trashseg.models.maskdino_loss import Targets, maskdino_loss

# Sampling points per head and level in decoder cross-attention (Deformable DETR / DINO default).
DECODER_POINTS = 4
# Denoising noise from MaskDINO's defaults (DN_NOISE_SCALE 0.4; label noise ratio 0.2, of which
# half flip, as in DN-DETR).
DN_LABEL_NOISE_RATIO = 0.2
DN_BOX_NOISE_SCALE = 0.4

# `decoder_layers` counts the prediction on the initial queries, as in Mask2FormerConfig:
# 10 = 9 decoder layers + 1 (MaskDINO's DEC_LAYERS: 9, "add one for the loss on learnable query").
# Mask2Former's published decoder sizes (MaskDINO's semantic config uses the same); its tiny twin
# has 3 decoder layers where Mask2Former-tiny has 2, as before.
_FULL_DECODER = M2F_FULL_DECODER
_TINY_DECODER = {**M2F_TINY_DECODER, "decoder_layers": 3}


def maskdino_swin_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> Mask2FormerConfig:
    backbone = swin_backbone_config(variant, tiny=tiny, drop_path_rate=drop_path_rate)
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=num_classes,
        ignore_value=IGNORE_INDEX,
        class_weight=4.0,
        mask_weight=5.0,
        dice_weight=5.0,
        no_object_weight=0.1,
        **(_TINY_DECODER if tiny else _FULL_DECODER),
    )


@dataclass
class Denoising:
    """Denoising queries for one batch: `groups` copies of every image's ground truth, each padded
    to `group_size` (the most objects in any image of the batch)."""

    content: torch.Tensor  # (B, groups * group_size, hidden) embedded noised labels
    boxes_unsigmoid: torch.Tensor  # (B, groups * group_size, 4) noised boxes, inverse-sigmoid
    counts: list[int]  # objects per image; query g * group_size + j reconstructs object j
    groups: int
    group_size: int

    @property
    def size(self) -> int:
        return self.groups * self.group_size


@dataclass
class MaskDinoOutput:
    """Per-stage predictions, each a dict with "logits" (B, Q, C+1), "masks" (B, Q, h, w) and
    "boxes" (B, Q, 4, normalised cx cy w h). `predictions[0]` is the encoder's selected tokens,
    then the initial queries, then each decoder layer; `denoising_predictions` is the same for
    the denoising queries (training only)."""

    predictions: list[dict[str, torch.Tensor]]
    denoising_predictions: list[dict[str, torch.Tensor]] | None
    denoising: Denoising | None
    selected_indices: torch.Tensor  # (B, Q) encoder tokens chosen as queries

    @property
    def class_queries_logits(self) -> torch.Tensor:
        return self.predictions[-1]["logits"]

    @property
    def masks_queries_logits(self) -> torch.Tensor:
        return self.predictions[-1]["masks"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_sine_embedding(boxes: torch.Tensor, hidden_dim: int) -> torch.Tensor:
    """(..., 4) boxes -> (..., 2 * hidden_dim): a sine embedding of each coordinate (DINO's
    conditional query position), hidden_dim / 2 features per coordinate."""
    features = hidden_dim // 2
    dim_t = torch.arange(features, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / features)
    angles = boxes.float()[..., None] * (2 * math.pi) / dim_t  # (..., 4, features)
    embedding = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1)
    return embedding.flatten(-3).to(boxes.dtype)


class HeadLinear(nn.Linear):
    """A prediction-head layer: default PyTorch init, or zeros where `zero_init` is set."""

    zero_init = False


class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers, *, zero_last=False):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(HeadLinear(a, b) for a, b in pairs)
        self.layers[-1].zero_init = zero_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = nn.functional.relu(x)
        return x


class MaskDinoDecoderLayer(nn.Module):
    """Post-norm DINO decoder layer: self-attention, deformable cross-attention, feed-forward."""

    def __init__(self, config: Mask2FormerConfig, num_levels: int):
        super().__init__()
        hidden, heads = config.hidden_dim, config.num_attention_heads
        self.self_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(hidden)
        self.cross_attn = MultiscaleDeformableAttention(hidden, heads, num_levels, DECODER_POINTS)
        self.cross_attn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, config.dim_feedforward),
            nn.ReLU(),
            nn.Linear(config.dim_feedforward, hidden),
        )
        self.ffn_norm = nn.LayerNorm(hidden)

    def forward(self, queries, query_pos, boxes, memory, spatial_shapes, attn_mask):
        q = k = queries + query_pos
        attended = self.self_attn(q, k, queries, attn_mask=attn_mask, need_weights=False)[0]
        queries = self.self_attn_norm(queries + attended)
        # Every level samples around the same normalised box (no padding, so valid ratios are 1).
        reference = boxes[:, :, None, :].expand(-1, -1, len(spatial_shapes), -1)
        attended, _ = self.cross_attn(
            queries,
            encoder_hidden_states=memory,
            position_embeddings=query_pos,
            reference_points=reference,
            spatial_shapes_list=spatial_shapes,
        )
        queries = self.cross_attn_norm(queries + attended)
        return self.ffn_norm(queries + self.ffn(queries))


class MaskDinoForSegmentation(Mask2FormerPreTrainedModel):
    """Backbone + Mask2Former pixel encoder (reused from transformers) + the MaskDINO decoder."""

    base_model_prefix = "model"

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        hidden, num_levels = config.hidden_dim, 3  # the pixel decoder's 3 deformable levels
        # Keyed "model.pixel_level_module." as in Mask2FormerForUniversalSegmentation, so a
        # Mask2Former checkpoint initialises the backbone and pixel encoder (the decoder stays new).
        self.model = nn.ModuleDict({"pixel_level_module": Mask2FormerPixelLevelModule(config)})
        # Query selection: encoder tokens are projected, then scored by the shared class head.
        self.encoder_output = nn.Linear(hidden, hidden)
        self.encoder_output_norm = nn.LayerNorm(hidden)
        self.label_embedding = nn.Embedding(config.num_labels, hidden)  # denoising content
        self.query_position = MLP(2 * hidden, hidden, hidden, 2)  # box sine embedding -> position
        self.layers = nn.ModuleList(
            MaskDinoDecoderLayer(config, num_levels) for _ in range(config.decoder_layers - 1)
        )
        # Heads shared by the encoder proposals and every decoder layer, as in MaskDINO.
        self.decoder_norm = nn.LayerNorm(hidden)
        self.class_head = nn.Linear(hidden, config.num_labels + 1)  # last class: "no object"
        # The box head starts as the identity refinement (DINO zero-initialises its last layer).
        self.box_head = MLP(hidden, hidden, 4, 3, zero_last=True)
        self.mask_head = MLP(hidden, hidden, config.mask_feature_size, 3)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, HeadLinear):
            # PyTorch's default Linear init, as in the reference MLPs: transformers' std-0.02
            # normal init shrinks a 3-layer head's output and gradients ~1000x.
            if module.zero_init:
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                init.uniform_(
                    module.bias,
                    -1 / math.sqrt(module.in_features),
                    1 / math.sqrt(module.in_features),
                )
        else:
            super()._init_weights(module)

    def forward(self, pixel_values: torch.Tensor, denoising: Denoising | None = None):
        pixels = self.model["pixel_level_module"](pixel_values)
        levels = pixels.decoder_hidden_states  # 1/32, 1/16, 1/8 after the deformable encoder
        mask_features = pixels.decoder_last_hidden_state  # per-pixel embeddings at 1/4
        spatial_shapes = [tuple(level.shape[-2:]) for level in levels]
        memory = torch.cat([level.flatten(2).transpose(1, 2) for level in levels], 1)

        selected, encoder_prediction, queries, boxes_unsigmoid = self.select_queries(
            memory, spatial_shapes, mask_features
        )
        num_dn = 0 if denoising is None else denoising.size
        if denoising is not None:
            queries = torch.cat([denoising.content.to(queries.dtype), queries], 1)
            boxes_unsigmoid = torch.cat(
                [denoising.boxes_unsigmoid.to(queries.dtype), boxes_unsigmoid], 1
            )
        attn_mask = (
            None
            if denoising is None
            else denoising_attention_mask(denoising, selected.shape[1], queries.device)
        )

        stages = [self.predict(queries, boxes_unsigmoid.sigmoid(), mask_features)]
        boxes = boxes_unsigmoid.sigmoid()
        for layer in self.layers:
            # Conditional query positions from the current boxes; each layer predicts a box delta
            # on the detached previous box (Deformable DETR's iterative refinement; DINO's
            # look-forward-twice variant, which keeps the previous box attached, is not used).
            query_pos = self.query_position(
                box_sine_embedding(boxes.detach(), self.config.hidden_dim)
            )
            queries = layer(queries, query_pos, boxes.detach(), memory, spatial_shapes, attn_mask)
            refined = (
                self.box_head(self.decoder_norm(queries)) + inverse_sigmoid(boxes.detach())
            ).sigmoid()
            stages.append(self.predict(queries, refined, mask_features))
            boxes = refined
        predictions = [encoder_prediction] + [_slice(stage, num_dn, None) for stage in stages]
        denoising_predictions = (
            None if denoising is None else [_slice(s, 0, num_dn) for s in stages]
        )
        return MaskDinoOutput(predictions, denoising_predictions, denoising, selected)

    def select_queries(self, memory, spatial_shapes, mask_features):
        """The top-k encoder tokens by their best non-"no object" class score become the queries.

        Returns the chosen indices, the encoder-stage prediction (supervised like a decoder
        layer), and the detached initial content queries and inverse-sigmoid reference boxes.
        """
        proposals = token_proposals(spatial_shapes, memory)
        tokens = self.encoder_output_norm(self.encoder_output(memory))
        scores = self.class_head(tokens)[..., :-1].max(-1).values
        k = min(self.config.num_queries, memory.shape[1])
        selected = scores.topk(k, dim=1).indices
        gather = lambda x: x.gather(1, selected[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        chosen = gather(tokens)
        boxes_unsigmoid = self.box_head(chosen) + gather(proposals)
        encoder_prediction = self.predict(chosen, boxes_unsigmoid.sigmoid(), mask_features)
        return selected, encoder_prediction, chosen.detach(), boxes_unsigmoid.detach()

    def predict(self, queries, boxes, mask_features) -> dict[str, torch.Tensor]:
        normed = self.decoder_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(normed), mask_features)
        return {"logits": self.class_head(normed), "masks": masks, "boxes": boxes}


def _slice(prediction: dict[str, torch.Tensor], start: int, stop: int | None) -> dict:
    return {key: value[:, start:stop] for key, value in prediction.items()}


def token_proposals(spatial_shapes, memory: torch.Tensor) -> torch.Tensor:
    """(B, S, 4) inverse-sigmoid anchor boxes, one per encoder token: centred on its cell, sized
    0.05 * 2**level (coarsest level largest), as DINO's encoder proposals."""
    anchors = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            (torch.arange(height, device=memory.device) + 0.5) / height,
            (torch.arange(width, device=memory.device) + 0.5) / width,
            indexing="ij",
        )
        size = 0.05 * 2.0 ** (len(spatial_shapes) - 1 - level)  # levels run coarse to fine
        wh = torch.full_like(xs, size)
        anchors.append(torch.stack([xs, ys, wh, wh], -1).flatten(0, 1))
    anchors = torch.cat(anchors, 0).to(memory.dtype)
    return inverse_sigmoid(anchors)[None].expand(memory.shape[0], -1, -1)


def denoising_attention_mask(denoising: Denoising, num_queries: int, device) -> torch.Tensor:
    """(N, N) bool mask, True = may not attend. Matching queries cannot see any denoising query
    (they would read the ground truth), and denoising groups cannot see each other."""
    size, group = denoising.size, denoising.group_size
    mask = torch.zeros(size + num_queries, size + num_queries, dtype=torch.bool, device=device)
    mask[size:, :size] = True
    for index in range(denoising.groups):
        start, stop = index * group, (index + 1) * group
        mask[start:stop, :start] = True
        mask[start:stop, stop:size] = True
    return mask


def make_denoising(
    labels: list[torch.Tensor],
    boxes: list[torch.Tensor],
    label_embedding: nn.Embedding,
    num_queries: int,
    num_classes: int,
) -> Denoising | None:
    """Noised copies of the ground truth: labels flipped at random with probability
    DN_LABEL_NOISE_RATIO / 2, box centres shifted by up to DN_BOX_NOISE_SCALE of half the size
    and sizes scaled by up to 1 +- DN_BOX_NOISE_SCALE (DN-DETR). As many groups as fit in
    `num_queries` denoising queries (MaskDINO's DN_NUM)."""
    counts = [len(label) for label in labels]
    group_size = max(counts, default=0)
    if group_size == 0:
        return None
    groups = max(1, num_queries // group_size)
    device = label_embedding.weight.device
    batch = len(labels)
    noised_labels = torch.zeros(batch, groups, group_size, dtype=torch.long, device=device)
    noised_boxes = torch.zeros(batch, groups, group_size, 4, device=device)
    present = torch.zeros(batch, groups, group_size, 1, device=device)
    for image, (label, box) in enumerate(zip(labels, boxes, strict=True)):
        count = len(label)
        label = label.to(device).repeat(groups, 1)
        flip = torch.rand(label.shape, device=device) < DN_LABEL_NOISE_RATIO * 0.5
        label = torch.where(flip, torch.randint_like(label, num_classes), label)
        box = box.to(device).float().repeat(groups, 1, 1)
        spread = torch.cat([box[..., 2:] / 2, box[..., 2:]], -1)
        box = (box + (torch.rand_like(box) * 2 - 1) * spread * DN_BOX_NOISE_SCALE).clamp(0, 1)
        noised_labels[image, :, :count], noised_boxes[image, :, :count] = label, box
        present[image, :, :count] = 1
    # Padding slots (images with fewer objects) carry no content and a degenerate box.
    content = label_embedding(noised_labels) * present
    return Denoising(
        content=content.flatten(1, 2),
        boxes_unsigmoid=inverse_sigmoid(noised_boxes).flatten(1, 2),
        counts=counts,
        groups=groups,
        group_size=group_size,
    )


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) binary masks -> (N, 4) normalised (cx, cy, w, h) of each mask's extent."""
    height, width = masks.shape[-2:]
    if masks.shape[0] == 0:
        return masks.new_zeros(0, 4)
    rows, cols = masks.any(2), masks.any(1)
    index_y = torch.arange(height, device=masks.device)
    index_x = torch.arange(width, device=masks.device)
    y0 = torch.where(rows, index_y, height).min(1).values
    y1 = torch.where(rows, index_y, -1).max(1).values + 1
    x0 = torch.where(cols, index_x, width).min(1).values
    x1 = torch.where(cols, index_x, -1).max(1).values + 1
    corners = torch.stack([x0 / width, y0 / height, x1 / width, y1 / height], 1).float()
    return torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)


class MaskDinoSegmentation(SegmentationModel):
    network_class = MaskDinoForSegmentation

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        mask_labels, class_labels = semantic_targets(masks)
        targets = Targets(
            class_labels, mask_labels, [masks_to_boxes(m.bool()) for m in mask_labels]
        )
        denoising = None
        if self.training:
            denoising = make_denoising(
                targets.labels,
                targets.boxes,
                self.network.label_embedding,
                self.network.config.num_queries,
                self.num_classes,
            )
        output = self.network(images, denoising)
        return maskdino_loss(output, targets, self.network.config)

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return semantic_log_probs(output, images)

"""MaskDINO's training loss: Hungarian matching on class, mask and box costs, then class cross
entropy, mask BCE + dice (on sampled points) and box L1 + GIoU for every stage (encoder
proposals, initial queries, each decoder layer), plus the same losses for the denoising queries,
which reconstruct the object they were noised from without matching.

Weights (IDEA-Research/MaskDINO defaults and ADE20K semantic config): class 4, mask 5, dice 5,
box L1 5, GIoU 2, no-object 0.1. Mask losses and costs use uniformly sampled points as
Mask2Former does (its importance sampling is left out: uniform points at the same count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from transformers import Mask2FormerConfig
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import generalized_box_iou
from transformers.models.mask2former.modeling_mask2former import (
    dice_loss,
    pair_wise_dice_loss,
    pair_wise_sigmoid_cross_entropy_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)

BOX_WEIGHT = 5.0
GIOU_WEIGHT = 2.0


@dataclass
class Targets:
    """Per image: class ids (N,), binary masks (N, H, W) and normalised cx cy w h boxes (N, 4)."""

    labels: list[torch.Tensor]
    masks: list[torch.Tensor]
    boxes: list[torch.Tensor]


def maskdino_loss(output, targets: Targets, config: Mask2FormerConfig) -> torch.Tensor:
    total = 0.0
    for prediction in output.predictions:
        indices = hungarian_match(prediction, targets, config)
        total = total + set_loss(prediction, targets, indices, config)
    if output.denoising_predictions is not None:
        indices = denoising_indices(
            output.denoising, output.denoising_predictions[0]["logits"].device
        )
        for prediction in output.denoising_predictions:
            total = total + set_loss(prediction, targets, indices, config)
    return total


def denoising_indices(denoising, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Denoising query g * group_size + j of an image reconstructs that image's object j."""
    indices = []
    for count in denoising.counts:
        objects = torch.arange(count, device=device)
        offsets = torch.arange(denoising.groups, device=device)[:, None] * denoising.group_size
        indices.append(((offsets + objects).flatten(), objects.repeat(denoising.groups)))
    return indices


def _point_logits(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, h, w) mask logits or binary masks sampled at (P, 2) points in [0, 1] -> (N, P)."""
    grid = points[None].expand(masks.shape[0], -1, -1).to(masks.dtype)
    return sample_point(masks[:, None], grid, align_corners=False).squeeze(1)


@torch.no_grad()
def hungarian_match(
    prediction, targets: Targets, config
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    indices = []
    for image, (labels, masks, boxes) in enumerate(
        zip(targets.labels, targets.masks, targets.boxes, strict=True)
    ):
        logits = prediction["logits"][image].float()
        if len(labels) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=logits.device)
            indices.append((empty, empty))
            continue
        points = torch.rand(config.train_num_points, 2, device=logits.device)
        predicted = _point_logits(prediction["masks"][image].float(), points)
        target = _point_logits(masks.float(), points)
        pred_boxes, boxes = prediction["boxes"][image].float(), boxes.float()
        cost = (
            config.class_weight * -logits.softmax(-1)[:, labels]
            + config.mask_weight * pair_wise_sigmoid_cross_entropy_loss(predicted, target)
            + config.dice_weight * pair_wise_dice_loss(predicted, target)
            + BOX_WEIGHT * torch.cdist(pred_boxes, boxes, p=1)
            - GIOU_WEIGHT
            * generalized_box_iou(
                center_to_corners_format(pred_boxes), center_to_corners_format(boxes)
            )
        )
        rows, cols = linear_sum_assignment(cost.nan_to_num(1e5).cpu().numpy())
        device = logits.device
        indices.append((torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)))
    return indices


def set_loss(prediction, targets: Targets, indices, config) -> torch.Tensor:
    logits = prediction["logits"].float()
    num_classes = logits.shape[-1] - 1
    class_targets = torch.full(
        logits.shape[:2], num_classes, dtype=torch.long, device=logits.device
    )
    for image, (queries, objects) in enumerate(indices):
        class_targets[image, queries] = targets.labels[image][objects]
    weight = torch.ones(num_classes + 1, device=logits.device)
    weight[-1] = config.no_object_weight
    loss = config.class_weight * nn.functional.cross_entropy(
        logits.transpose(1, 2), class_targets, weight
    )

    num_objects = max(1, sum(len(objects) for _, objects in indices))
    pred_masks = torch.cat([prediction["masks"][i][q] for i, (q, _) in enumerate(indices)]).float()
    if pred_masks.shape[0] == 0:
        return loss + prediction["masks"].sum() * 0.0 + prediction["boxes"].sum() * 0.0
    target_masks = [targets.masks[i][o].float() for i, (_, o) in enumerate(indices)]
    points = torch.rand(config.train_num_points, 2, device=logits.device)
    predicted = _point_logits(pred_masks, points)
    target = torch.cat([_point_logits(masks, points) for masks in target_masks])
    loss = loss + config.mask_weight * sigmoid_cross_entropy_loss(predicted, target, num_objects)
    loss = loss + config.dice_weight * dice_loss(predicted, target, num_objects)

    pred_boxes = torch.cat([prediction["boxes"][i][q] for i, (q, _) in enumerate(indices)]).float()
    boxes = torch.cat([targets.boxes[i][o] for i, (_, o) in enumerate(indices)]).float()
    l1 = nn.functional.l1_loss(pred_boxes, boxes, reduction="sum") / num_objects
    giou = generalized_box_iou(
        center_to_corners_format(pred_boxes), center_to_corners_format(boxes)
    )
    return loss + BOX_WEIGHT * l1 + GIOU_WEIGHT * (1 - giou.diagonal()).sum() / num_objects

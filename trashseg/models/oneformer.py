"""OneFormer (Jain et al. 2023, arXiv 2211.06220) in semantic task mode, on Swin or on trashseg's
own DiNAT backbone: Mask2Former-style (class, mask) queries conditioned on a task token.

Task token without a tokenizer download. OneFormer feeds the token ids of the sentence "the task
is {task}" (length `task_seq_len`) as a float vector into a small MLP. trashseg only ever asks
for the semantic task, so the token is one constant input; it is built here from a fixed word
vocabulary (`TASK_VOCABULARY`), not from CLIP's BPE tokenizer (which no installed package ships
and the hub is unreachable). A published checkpoint's task MLP was trained on CLIP's ids, so with
it the task embedding starts from a different (still constant) input and fine-tuning adapts it.

Text branch. The query-text contrastive loss is a training-only auxiliary of the paper; here it
is disabled (`is_training=False`), as transformers allows: the text
mapper is not built and the loss is Mask2Former's class + mask + dice terms. A published
checkpoint's text-mapper tensors have no counterpart here and are skipped on loading; the
loss's `logit_scale` stays in the network but receives no gradient.
"""

from __future__ import annotations

import torch
from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, PretrainedConfig

from trashseg.errors import ConfigError
from trashseg.models.backbones import swin_backbone_config
from trashseg.models.base import IGNORE_INDEX, SegmentationModel
from trashseg.models.dinat import dinat_backbone_config
from trashseg.models.mask2former import semantic_log_probs, semantic_targets

TASK_VOCABULARY = {
    "<pad>": 0,
    "<start>": 1,
    "<end>": 2,
    "the": 3,
    "task": 4,
    "is": 5,
    "semantic": 6,
    "instance": 7,
    "panoptic": 8,
}

# Published semantic decoder of the ADE20K Swin-L / DiNAT-L models (250 queries, 6 deformable
# pixel-decoder layers, 10 decoder layers, 256 wide), so their queries load unchanged.
_FULL_DECODER = dict(num_queries=250)
# The tiny twin drops the paper's decoder dropout (0.1): its object queries all start as the one
# task token and differ only through their positional embeddings, and with 8 queries of width 32
# the dropout noise is what tells them apart in training, so in eval they collapse onto one
# class (one-batch fit at 150 steps: val-mode mIoU 0.13 with dropout, 0.41 without).
_TINY_DECODER = dict(
    dropout=0.0,
    hidden_dim=32,
    conv_dim=32,
    mask_dim=32,
    encoder_layers=1,
    decoder_layers=2,
    query_dec_layers=1,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    num_attention_heads=2,
    num_queries=8,
    train_num_points=1024,
)

def task_token_ids(task: str, length: int) -> torch.Tensor:
    """(length,) ids of "the task is {task}" in TASK_VOCABULARY, padded with <pad>."""
    words = ["the", "task", "is", task]
    if task not in ("semantic", "instance", "panoptic"):
        raise ConfigError(f"OneFormer task is {task!r}; expected semantic, instance or panoptic")
    ids = [
        TASK_VOCABULARY["<start>"],
        *(TASK_VOCABULARY[w] for w in words),
        TASK_VOCABULARY["<end>"],
    ]
    return torch.tensor(ids + [TASK_VOCABULARY["<pad>"]] * (length - len(ids)))


def oneformer_config(
    backbone: str, variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> OneFormerConfig:
    if variant != "l":
        raise ValueError(f"OneFormer is published with {backbone}-L only; got variant {variant!r}")
    backbone_config: PretrainedConfig = (
        swin_backbone_config(variant, tiny=tiny, drop_path_rate=drop_path_rate)
        if backbone == "swin"
        else dinat_backbone_config(tiny=tiny, drop_path_rate=drop_path_rate)
    )
    return OneFormerConfig(
        backbone_config=backbone_config,
        num_labels=num_classes,
        ignore_value=IGNORE_INDEX,
        is_training=False,
        **(_TINY_DECODER if tiny else _FULL_DECODER),
    )


class OneFormerSegmentation(SegmentationModel):
    network_class = OneFormerForUniversalSegmentation

    def __init__(
        self, architecture: str, num_classes: int, network: OneFormerForUniversalSegmentation
    ):
        super().__init__(architecture, num_classes, network)
        # Not a buffer: a constant of the tokenisation, kept out of checkpoints.
        self._task_ids = task_token_ids("semantic", network.config.task_seq_len)

    def _task_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self._task_ids.to(images.device).expand(images.shape[0], -1)

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        mask_labels, class_labels = semantic_targets(masks)
        output = self.network(
            pixel_values=images,
            task_inputs=self._task_inputs(images),
            mask_labels=mask_labels,
            class_labels=class_labels,
        )
        return output.loss.reshape(())  # transformers returns shape (1,)

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(pixel_values=images, task_inputs=self._task_inputs(images))
        with torch.autocast(device_type=images.device.type, enabled=False):
            return semantic_log_probs(output, images)

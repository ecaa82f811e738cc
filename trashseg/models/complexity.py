"""Compute cost of every architecture in the table: GFLOPs of one inference forward pass.

Counted with `torch.utils.flop_counter.FlopCounterMode`, which reports FLOPs with one
multiply-add = 2 FLOPs (so these are twice the "GFLOPs" of papers that count multiply-adds,
as mmcv/fvcore-based tables such as Swin's, Mask2Former's and SeMask's do). It counts matrix
products and convolutions (including the einsums of attention and of the pure-PyTorch
neighbourhood attention and deformable convolution); element-wise work, norms, softmax and
grid sampling are not counted, as in those tables. The pass is `predict_logits` of one image,
run on the "meta" device (shapes only, no memory or arithmetic), so even Swin-L sizes in
seconds; an architecture that cannot run on "meta" is counted on real CPU tensors instead.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from trashseg.data.classes import DEFAULT_TAXONOMY


def inference_gflops(name: str, image_size: int = 512, num_classes: int = len(DEFAULT_TAXONOMY)) -> float:
    """GFLOPs (2 per multiply-add) of `predict_logits` on one image_size x image_size image."""
    from trashseg.models import architecture_spec

    spec = architecture_spec(name)
    try:
        with torch.device("meta"):
            # Some layers create parameters with legacy constructors that ignore the default
            # device; .to("meta") moves those too.
            return _count(spec.build(num_classes).to("meta"), image_size)
    except (NotImplementedError, RuntimeError):
        # An explicit CPU device: a failure inside nested torch-function modes can leave the
        # meta device context active.
        with torch.device("cpu"):
            return _count(spec.build(num_classes), image_size)


def _count(model: torch.nn.Module, image_size: int) -> float:
    # Frozen parameters instead of no_grad: FlopCounterMode's module hooks fail on real tensors
    # that claim requires_grad inside no_grad (OneFormer's decoder makes such tensors).
    model.eval().requires_grad_(False)
    images = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model.predict_logits(images)
    return counter.get_total_flops() / 1e9


def complexity_table(names=None, image_size: int = 512) -> list[tuple[str, int, float]]:
    """(name, parameters, GFLOPs at image_size) for `names`, default every architecture."""
    from trashseg.models import ARCHITECTURES, architecture_table

    names = list(ARCHITECTURES) if names is None else list(names)
    params = dict(architecture_table(names=names))
    return [(name, params[name], inference_gflops(name, image_size)) for name in names]

"""Compute cost of every architecture in the table: GFLOPs of one inference forward pass.

Counted with `torch.utils.flop_counter.FlopCounterMode`, which reports FLOPs with one
multiply-add = 2 FLOPs (so these are twice the "GFLOPs" of papers that count multiply-adds,
as mmcv/fvcore-based tables such as Swin's, Mask2Former's and SeMask's do). It counts matrix
products and convolutions (including the einsums of attention and of the pure-PyTorch
neighbourhood attention and deformable convolution); element-wise work, norms, softmax and
grid sampling are not counted, as in those tables. The pass is `predict_logits` of one image,
run on the "meta" device (shapes only, no memory or arithmetic), so even Swin-L sizes in
seconds; an architecture that cannot run on "meta" is counted on real CPU tensors instead.

Model FLOPs utilisation (MFU) of a training run: the counted FLOPs per image x 3 (forward
plus a backward of about twice the forward's cost) x images/s, over the card's dense bf16
peak from `DENSE_BF16_PEAK_TFLOPS`. The count is of the inference forward, so the loss's own
extra work (Mask2Former's matching and point-sampled mask loss) is not in it; figures compare
runs of one architecture best. A card missing from the table has no MFU ("n/a"), never a guess.
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


# Dense (without 2:4 structured sparsity) bf16 Tensor Core peak in TFLOP/s, keyed by the device
# name torch reports (`torch.cuda.get_device_name`). NVIDIA's datasheets print the bf16 figure
# "with sparsity"; the dense peak is half of it:
#   H100 SXM 1,979, PCIe 1,513, NVL 1,671: https://www.nvidia.com/en-us/data-center/h100/
#   H200 SXM 1,979, NVL 1,671: https://www.nvidia.com/en-us/data-center/h200/
#   A100 (40 and 80 GB, SXM4 and PCIe) 624: https://www.nvidia.com/en-us/data-center/a100/
# A MIG slice reports another name ("... MIG 1g.18gb") and rightly finds no entry.
DENSE_BF16_PEAK_TFLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 1979 / 2,  # H100 SXM5
    "NVIDIA H100 PCIe": 1513 / 2,
    "NVIDIA H100 NVL": 1671 / 2,
    "NVIDIA H200": 1979 / 2,  # H200 SXM
    "NVIDIA H200 NVL": 1671 / 2,
    "NVIDIA A100-SXM4-40GB": 624 / 2,
    "NVIDIA A100-SXM4-80GB": 624 / 2,
    "NVIDIA A100-PCIE-40GB": 624 / 2,
    "NVIDIA A100 80GB PCIe": 624 / 2,
}
NOT_AVAILABLE = "n/a"


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the card named `device_name`; None when the table lacks it."""
    return DENSE_BF16_PEAK_TFLOPS.get(device_name.strip())


def training_mfu(gflops_per_image: float, images_per_s: float, peak_tflops: float | None) -> float | str:
    """Model FLOPs utilisation (0..1) of training at `images_per_s`; "n/a" without a known peak."""
    if peak_tflops is None or peak_tflops <= 0:
        return NOT_AVAILABLE
    return 3 * gflops_per_image * 1e9 * images_per_s / (peak_tflops * 1e12)


def model_gflops(model: torch.nn.Module, image_size: int) -> float:
    """GFLOPs of `predict_logits` of an already built `model` on one image, on the model's own
    device (a GPU counts a full-size model in milliseconds). Leaves the model in eval mode with
    its parameters frozen; rebuild or unfreeze it to train again."""
    return _count(model, image_size)


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

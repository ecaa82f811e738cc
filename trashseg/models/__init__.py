"""Every architecture of the recipe behind one interface, listed in one explicit table.

`build_model(name, num_classes)` returns a `SegmentationModel` with `loss(images, masks)` and
`predict_logits(images)`; `ARCHITECTURES` maps each name to its builder. Each full-size model
has a `-tiny` twin (depth 1 per stage, narrow, few queries) for CPU tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from transformers import PretrainedConfig

from trashseg.data.classes import DEFAULT_TAXONOMY
from trashseg.errors import ConfigError
from trashseg.models.base import IGNORE_INDEX, SegmentationModel
from trashseg.models.dinat import TrashsegDinatConfig, is_dinat_checkpoint, load_dinat_weights
from trashseg.models.eomt import (
    EomtDinov3Segmentation,
    EomtSegmentation,
    eomt_config,
    eomt_dinov3_config,
)
from trashseg.models.mask2former import (
    Mask2FormerSegmentation,
    mask2former_dinat_config,
    mask2former_swin_config,
)
from trashseg.models.maskdino import MaskDinoSegmentation, maskdino_swin_config
from trashseg.models.oneformer import OneFormerSegmentation, oneformer_config
from trashseg.models.segformer import SegformerSegmentation, segformer_config
from trashseg.models.semask import (
    SeMaskMask2FormerSegmentation,
    is_semask_checkpoint,
    load_swin_weights,
    mask2former_semask_config,
)
from trashseg.models.upernet import UperNetSegmentation, upernet_config

__all__ = [
    "ARCHITECTURES",
    "IGNORE_INDEX",
    "ArchitectureSpec",
    "SegmentationModel",
    "architecture_table",
    "build_model",
    "has_unused_parameters",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build one named architecture: its transformers config and its wrapper class."""

    name: str
    family: str
    make_config: Callable[[int], PretrainedConfig]
    wrapper: type[SegmentationModel]
    tiny: bool

    def build(self, num_classes: int) -> SegmentationModel:
        network = self.wrapper.network_class(self.make_config(num_classes))
        return self.wrapper(self.name, num_classes, network)


_M2F, _UPER, _SEG = Mask2FormerSegmentation, UperNetSegmentation, SegformerSegmentation
_SEMASK = SeMaskMask2FormerSegmentation
# SeMask-Swin encoders under Mask2Former, with its own pixel decoder or with FaPN's.
_SEMASK_M2F = partial(mask2former_semask_config, "msdeformattn")
_SEMASK_FAPN = partial(mask2former_semask_config, "fapn")
_EOMT, _ONE = EomtSegmentation, OneFormerSegmentation

# name -> (family, config builder taking (num_classes, tiny=...), wrapper). Every entry also gets
# a "<name>-tiny" twin built from the same builder with tiny=True.
_FULL_SIZE = {
    "mask2former-swin-t": ("mask2former", partial(mask2former_swin_config, "t"), _M2F),
    "mask2former-swin-b": ("mask2former", partial(mask2former_swin_config, "b"), _M2F),
    "mask2former-swin-l": ("mask2former", partial(mask2former_swin_config, "l"), _M2F),
    "mask2former-dinat-l": ("mask2former", partial(mask2former_dinat_config, "l"), _M2F),
    "mask2former-semask-swin-t": ("semask", partial(_SEMASK_M2F, "t"), _SEMASK),
    "mask2former-semask-swin-b": ("semask", partial(_SEMASK_M2F, "b"), _SEMASK),
    "mask2former-semask-swin-l": ("semask", partial(_SEMASK_M2F, "l"), _SEMASK),
    "mask2former-semask-fapn-swin-t": ("semask", partial(_SEMASK_FAPN, "t"), _SEMASK),
    "mask2former-semask-fapn-swin-b": ("semask", partial(_SEMASK_FAPN, "b"), _SEMASK),
    "mask2former-semask-fapn-swin-l": ("semask", partial(_SEMASK_FAPN, "l"), _SEMASK),
    "upernet-swin-t": ("upernet", partial(upernet_config, "swin", "t"), _UPER),
    "upernet-swin-b": ("upernet", partial(upernet_config, "swin", "b"), _UPER),
    "upernet-swin-l": ("upernet", partial(upernet_config, "swin", "l"), _UPER),
    "upernet-convnext-t": ("upernet", partial(upernet_config, "convnext", "t"), _UPER),
    "upernet-convnext-b": ("upernet", partial(upernet_config, "convnext", "b"), _UPER),
    "upernet-convnext-l": ("upernet", partial(upernet_config, "convnext", "l"), _UPER),
    "maskdino-swin-t": ("maskdino", partial(maskdino_swin_config, "t"), MaskDinoSegmentation),
    "maskdino-swin-b": ("maskdino", partial(maskdino_swin_config, "b"), MaskDinoSegmentation),
    "maskdino-swin-l": ("maskdino", partial(maskdino_swin_config, "l"), MaskDinoSegmentation),
    "segformer-b0": ("segformer", partial(segformer_config, "b0"), _SEG),
    "segformer-b1": ("segformer", partial(segformer_config, "b1"), _SEG),
    "segformer-b2": ("segformer", partial(segformer_config, "b2"), _SEG),
    "segformer-b3": ("segformer", partial(segformer_config, "b3"), _SEG),
    "segformer-b4": ("segformer", partial(segformer_config, "b4"), _SEG),
    "segformer-b5": ("segformer", partial(segformer_config, "b5"), _SEG),
    "eomt-dinov2-s": ("eomt", partial(eomt_config, "s"), _EOMT),
    "eomt-dinov2-b": ("eomt", partial(eomt_config, "b"), _EOMT),
    "eomt-dinov2-l": ("eomt", partial(eomt_config, "l"), _EOMT),
    "eomt-dinov3-s": ("eomt", partial(eomt_dinov3_config, "s"), EomtDinov3Segmentation),
    "eomt-dinov3-b": ("eomt", partial(eomt_dinov3_config, "b"), EomtDinov3Segmentation),
    "eomt-dinov3-l": ("eomt", partial(eomt_dinov3_config, "l"), EomtDinov3Segmentation),
    "oneformer-swin-l": ("oneformer", partial(oneformer_config, "swin", "l"), _ONE),
    "oneformer-dinat-l": ("oneformer", partial(oneformer_config, "dinat", "l"), _ONE),
}

# Architectures whose loss leaves parameters without a gradient in every step, so DDP must
# search the autograd graph for them (`find_unused_parameters=True`, a traversal per step);
# the others skip it. Found by one forward/backward of each tiny twin: Swin's final
# layernorm feeds nothing the decoders read, OneFormer's contrastive `logit_scale` is not
# in its training loss. Their -tiny twins share the entry.
UNUSED_PARAMETERS = frozenset(
    [name for name in _FULL_SIZE if "swin" in name.split("-")] + ["oneformer-swin-l", "oneformer-dinat-l"]
)


def has_unused_parameters(name: str) -> bool:
    """Whether DDP training of architecture `name` needs `find_unused_parameters=True`."""
    return architecture_spec(name).name.removesuffix("-tiny") in UNUSED_PARAMETERS


def _call_config(config: Callable[..., PretrainedConfig], tiny: bool, num_classes: int):
    return config(num_classes, tiny=tiny)


def _with_tiny_twins() -> dict[str, ArchitectureSpec]:
    table = {}
    for name, (family, config, wrapper) in _FULL_SIZE.items():
        for tiny in (False, True):
            spec_name = f"{name}-tiny" if tiny else name
            make_config = partial(_call_config, config, tiny)
            table[spec_name] = ArchitectureSpec(spec_name, family, make_config, wrapper, tiny)
    return table


ARCHITECTURES: dict[str, ArchitectureSpec] = _with_tiny_twins()


def architecture_spec(name: str) -> ArchitectureSpec:
    spec = ARCHITECTURES.get(name)
    if spec is None:
        raise ConfigError(
            f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}. "
            "Run `trashseg architectures` to list them with parameter counts."
        )
    return spec


def build_model(name: str, num_classes: int, *, pretrained: str | None = None) -> SegmentationModel:
    """Build architecture `name` for `num_classes` classes, randomly initialised or with weights
    from `pretrained` (a local folder or hub id of a transformers checkpoint of the same family;
    for `mask2former-dinat-*` also a transformers DiNAT checkpoint, which sets the backbone; for
    `mask2former-semask-*` also a Swin or Mask2Former-Swin checkpoint, which fills the shared tensors).

    Tensors the checkpoint lacks or has in another shape (e.g. a class head for another number of
    classes) are left at random init and logged; a checkpoint providing under half of the
    architecture's tensors is refused as the wrong architecture.
    """
    spec = architecture_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"num_classes is {num_classes!r}; expected an integer >= 2 (background plus at least "
            "one class), taken from the dataset's class table."
        )
    if pretrained is None:
        return spec.build(num_classes)
    # from_pretrained leaves networks in eval mode; a new model starts in training mode either way.
    network = _load_network(spec, num_classes, pretrained).train()
    return spec.wrapper(name, num_classes, network)


def _load_network(spec: ArchitectureSpec, num_classes: int, pretrained: str) -> torch.nn.Module:
    config = spec.make_config(num_classes)
    backbone_config = getattr(config, "backbone_config", None)
    if isinstance(backbone_config, TrashsegDinatConfig) and is_dinat_checkpoint(pretrained):
        # An ImageNet DiNAT checkpoint initialises the backbone; the decoder starts random.
        network = spec.wrapper.network_class(config)
        load_dinat_weights(network.model.pixel_level_module.encoder, pretrained)
        return network
    if spec.family == "semask" and not is_semask_checkpoint(pretrained):
        # A Swin or Mask2Former-Swin checkpoint fills the shared tensors; semantic layers start fresh.
        network = spec.wrapper.network_class(config)
        load_swin_weights(network, pretrained)
        return network
    network, info = spec.wrapper.network_class.from_pretrained(
        pretrained, config=config, ignore_mismatched_sizes=True, output_loading_info=True
    )
    expected = len(network.state_dict())
    missing = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    if len(missing) > expected / 2:
        raise ConfigError(
            f"pretrained checkpoint {pretrained!r} provides only {expected - len(missing)} of the "
            f"{expected} tensors of {spec.name!r}; expected a "
            f"{spec.wrapper.network_class.__name__} checkpoint of that architecture and size."
        )
    if missing:
        log.warning(
            "%s: %d of %d tensors not loaded from %s (left at random init): %s",
            spec.name,
            len(missing),
            expected,
            pretrained,
            ", ".join(sorted(missing)[:20]),
        )
    return network


def architecture_table(
    num_classes: int = len(DEFAULT_TAXONOMY), names: list[str] | None = None
) -> list[tuple[str, int]]:
    """(name, parameter count) of every architecture (or of `names`), for the default taxonomy's
    classes unless told otherwise; built on the meta device, so even the largest costs no memory
    or init time."""
    rows = []
    for name in ARCHITECTURES if names is None else names:
        with torch.device("meta"):
            model = architecture_spec(name).build(num_classes)
        rows.append((name, model.parameter_count()))
    return rows

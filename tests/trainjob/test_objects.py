"""TrainJob objects: names, labels, env by reference, and validation through Trainer v2.3's models."""

import os
import re
from pathlib import Path

import pytest
import yaml

from trashseg.errors import ConfigError
from trashseg.trainjob.objects import (
    NAME_MAX,
    JobSettings,
    LauncherPod,
    job_labels,
    job_name,
    label_value,
    node_env,
    train_job,
    validated,
)
from trashseg.trainjob.spec import NODE_MODULE, NodeTrainSpec

RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
RUN = "5f0c3c9e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
SPEC = NodeTrainSpec(run_id=RUN, architecture="mask2former-semask-fapn-swin-l", stage="pseudo", iterations=80_000,
                     image_size=512, dataset_version="v", checkpoint_store="s3://trashseg/checkpoints",
                     dataset_uri=f"s3://trashseg/checkpoints/{RUN}/staged/x/dataset")
SETTINGS = JobSettings(image="ghcr.io/trashseg/trashseg-train:0a1b2c3", num_nodes=2, gpus_per_node=8)
POD = LauncherPod("launcher", "uid-1", "trashseg-runs")


def job() -> dict:
    return train_job(job_name(RUN, "pseudo", SPEC.architecture), SPEC, SETTINGS,
                     job_labels(RUN, "train-pseudo", SPEC.architecture, "pseudo"), POD)


def test_job_names_are_deterministic_valid_and_distinct():
    names = {job_name(run, stage, arch) for run in (RUN, RUN[::-1]) for stage in ("base", "pseudo", "finetune")
             for arch in ("mask2former-semask-fapn-swin-l", "mask2former-semask-fapn-swin-b", "segformer-b0-tiny")}
    assert len(names) == 18  # truncation never merges two jobs: the digest keeps them apart
    for name in names:
        assert RFC1035.fullmatch(name) and len(name) <= NAME_MAX, name
    assert job_name(RUN, "base", "segformer-b0-tiny") == job_name(RUN, "base", "segformer-b0-tiny")


def test_a_node_spec_with_missing_or_mistyped_fields_is_a_config_error():
    import json

    values = json.loads(SPEC.to_json())
    assert NodeTrainSpec.from_json(json.dumps({**values, "pseudo_ratio": 1})).pseudo_ratio == 1  # an int is a float
    del values["stage"]
    with pytest.raises(ConfigError, match=r"lacks \['stage'\]; the launcher writes every one"):
        NodeTrainSpec.from_json(json.dumps(values))
    values["stage"] = "base"
    for key, bad, expected in (("iterations", "80000", "int"), ("settings", "lr=1", "tuple"), ("extra", {"k": 1}, "dict"),
                               ("pseudo_ratio", True, "float"), ("settings", [1], "tuple")):
        with pytest.raises(ConfigError, match=rf"wrong type: {key}=.*\(expected {expected}"):
            NodeTrainSpec.from_json(json.dumps({**values, key: bad}))


def test_labels_are_valid_label_values():
    assert label_value("a/b:c" + "x" * 80).startswith("a-b-c") and len(label_value("y" * 80)) == 63
    assert job_labels(RUN, "train-base", "segformer-b0", "base")["trashseg.io/kfp-run-id"] == RUN


def test_node_runs_the_node_module_under_torchrun_with_its_spec():
    trainer = job()["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:3] == ["--module", NODE_MODULE, "--spec"]
    assert NodeTrainSpec.from_json(trainer["args"][3]) == SPEC
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # Trainer's torch plugin sets those


def test_env_holds_references_never_values():
    env = node_env(RUN)
    literal = {e["name"] for e in env if "value" in e}
    assert literal == {"KFP_RUN_ID", "PYTHONUNBUFFERED"}
    refs = {e["name"]: e["valueFrom"] for e in env if "valueFrom" in e}
    assert refs["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "trashseg-s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}
    assert refs["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["optional"] is True
    assert refs["TRASHSEG_S3_ENDPOINT"]["configMapKeyRef"]["name"] == "trashseg-storage"


def test_validation_refuses_unknown_fields_wrong_types_and_other_kinds():
    obj = job()
    obj["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(ConfigError, match="does not match Trainer v2.3.x"):
        validated(obj)
    obj = job()
    obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]["hostNetwork"] = True  # not a field a runtime patch may set
    with pytest.raises(ConfigError, match=r"does not know: \['spec\.runtimePatches\[0\].*hostNetwork'\]"):
        validated(obj)
    with pytest.raises(ConfigError, match="expected trainer.kubeflow.org/v1alpha1"):
        validated({**job(), "apiVersion": "kubeflow.org/v1"})


def test_job_settings_are_checked():
    with pytest.raises(ConfigError, match="num_nodes=0"):
        JobSettings(image="x:1", num_nodes=0)
    with pytest.raises(ConfigError, match="image is empty"):
        JobSettings(image="")
    assert JobSettings.from_dict({"image": "x:1", "num_nodes": 2.0}).num_nodes == 2  # a KFP struct's numbers


RUNTIME = Path(__file__).resolve().parents[2] / "manifests" / "components" / "trainer" / "runtime.yaml"


@pytest.mark.skipif(not os.environ.get("TRAINER_CRDS"), reason="set TRAINER_CRDS to Trainer v2.3's manifests/base/crds")
@pytest.mark.parametrize("plural", ["trainjobs", "trainingruntimes"])
def test_objects_validate_against_the_v2_3_crd_schemas(plural):
    """No package ships Trainer's CRDs: point TRAINER_CRDS at a v2.3.0 checkout's manifests/base/crds/."""
    import jsonschema

    crd = yaml.safe_load((Path(os.environ["TRAINER_CRDS"]) / f"trainer.kubeflow.org_{plural}.yaml").read_text())
    schema = _strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    obj = job() if plural == "trainjobs" else yaml.safe_load(RUNTIME.read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    assert not errors


def test_the_manifest_runtime_validates_through_the_models():
    validated(yaml.safe_load(RUNTIME.read_text()))


def _strict(schema):
    """The CRD schema with unknown fields refused (the API server would prune them silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _strict(v) for k, v in schema.items()}
    if schema.pop("x-kubernetes-int-or-string", False):
        schema.pop("type", None)
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema

"""The whole recipe as one pipeline run.

    prepare -> ParallelFor(architectures): train -> predict val/test -> evaluate
            -> Collected -> ensemble + CRF + consensus -> evaluate
            -> [pseudo round] pseudo-labels -> ParallelFor: retrain -> predict
                              -> ensemble -> evaluate
                              -> select-round: the round with the better held-out val mIoU
            -> submission + register the kept round (challenger; champion only if better)
    all under an ExitHandler that records how the run ended. With ENGINE=trainjob (the cluster
    default) a check-trainer task comes first and each train task launches a TrainJob.

`build_full_pipeline(settings)` builds it for given cluster settings (images, GPUs per
task); `full_pipeline` is the default build, used by kfp.local and the tests.
"""

# No `from __future__ import annotations` here: KFP reads the pipeline's parameter types
# from real annotation objects, not strings.
from kfp import dsl

from components.check_weights import check_weights
from components.make_pseudo_labels import make_pseudo_labels
from components.prepare_data import prepare_data
from components.record_status import record_status
from components.select_round import select_round
from pipelines.cluster import DEFAULT_SETTINGS, ClusterSettings, cpu_task
from pipelines.graph import ensemble_round, finish_round, train_round, trainer_preflight
from trashseg import secrets

# The recipe's final ensemble ("Ensemble-ALL"): SeMask-Mask2Former and SeMask-FaPN-Mask2Former
# on Swin-L, Mask2Former on DiNAT-L and on Swin-L. The local demo passes `-tiny` variants.
RECIPE_ARCHITECTURES = [
    "mask2former-semask-swin-l",
    "mask2former-semask-fapn-swin-l",
    "mask2former-dinat-l",
    "mask2former-swin-l",
]
DEFAULT_DATA_STORE = "s3://trashseg"  # the bucket manifests/base/storage-config.yaml names
DEFAULT_CHECKPOINT_STORE = "s3://trashseg/checkpoints"
DEFAULT_MODEL_NAME = "trashseg"
DEFAULT_EXPERIMENT = "trashseg"
DEFAULT_ITERATIONS = 80_000


def build_full_pipeline(settings: ClusterSettings = DEFAULT_SETTINGS):
    @dsl.pipeline(
        name="trashseg-full",
        description="Train several architectures, ensemble with DenseCRF and consensus, pseudo-label "
        "retraining, submission CSV, model registry.",
    )
    def full_pipeline(
        dataset_version: str,
        data_store: str = DEFAULT_DATA_STORE,
        architectures: list[str] = RECIPE_ARCHITECTURES,
        iterations: int = DEFAULT_ITERATIONS,
        image_size: int = 512,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        train_settings: list[str] = [],  # noqa: B006 (KFP reads defaults from the signature)
        ensemble_settings: list[str] = [],  # noqa: B006
        pseudo_round: bool = True,
        pseudo_settings: list[str] = [],  # noqa: B006
        pseudo_ratio: float = 0.25,
        model_name: str = DEFAULT_MODEL_NAME,
        min_improvement: float = 0.0,
        tracking_uri: str = secrets.MLFLOW_TRACKING_URI,
        experiment: str = DEFAULT_EXPERIMENT,
        checkpoint_store: str = DEFAULT_CHECKPOINT_STORE,
    ):
        """`dataset_version`: the content hash of a dataset version in `data_store` (see
        `trashseg data versions`); it keys the cache of prepare and train. `*_settings`:
        `key=value` overrides of TrainConfig, EnsembleConfig and PseudoLabelConfig."""
        status = cpu_task(
            record_status(pipeline="full", tracking_uri=tracking_uri, experiment=experiment),
            settings,
            mlflow=True,
        )
        with dsl.ExitHandler(status, name="full-run"):
            # Pretrained starts are read from data_store's mirror (cluster nodes may have no
            # internet); a missing one fails here, on a CPU, before any GPU task starts.
            weights = cpu_task(
                check_weights(architectures=architectures, train_settings=train_settings, weights_store=data_store),
                settings,
                object_store=True,
            ).set_display_name("check-weights")
            trainer = trainer_preflight(settings)  # ENGINE=trainjob: Trainer usable here, checked on a CPU
            if trainer is not None:
                weights.after(trainer)
            prepared = cpu_task(
                prepare_data(source=data_store, dataset_version=dataset_version, val_fraction=val_fraction, seed=split_seed),
                settings,
                object_store=True,
                cache=True,
            ).set_display_name("prepare").after(weights)
            dataset = prepared.outputs["dataset"]

            base = train_round(
                settings, architectures, dataset, dataset_version, iterations, image_size, train_settings,
                checkpoint_store, tracking_uri, experiment, stage="base", default_iterations=DEFAULT_ITERATIONS,
                weights_store=data_store,
            )
            first = ensemble_round(settings, base, dataset, ensemble_settings, name="ensemble")

            with dsl.If(pseudo_round == True, name="pseudo-round"):  # noqa: E712 (a KFP condition)
                pseudo = cpu_task(
                    make_pseudo_labels(ensemble=first.outputs["ensemble"], dataset=dataset, pseudo_settings=pseudo_settings),
                    settings,
                ).set_display_name("pseudo-labels")
                retrained = train_round(
                    settings, architectures, dataset, dataset_version, iterations, image_size, train_settings,
                    checkpoint_store, tracking_uri, experiment, stage="pseudo", default_iterations=DEFAULT_ITERATIONS,
                    pseudo_dataset=pseudo.outputs["pseudo_dataset"], pseudo_ratio=pseudo_ratio,
                    weights_store=data_store,
                )
                second = ensemble_round(settings, retrained, dataset, ensemble_settings, name="ensemble-pseudo")
                # Pseudo-labels do not always help: keep the round with the better held-out val mIoU.
                chosen = cpu_task(
                    select_round(base_ensemble=first.outputs["ensemble"], pseudo_ensemble=second.outputs["ensemble"],
                                 tracking_uri=tracking_uri, experiment=experiment),
                    settings,
                    mlflow=True,
                ).set_display_name("select-round")
                selection = chosen.outputs["selection"]
                with dsl.If(chosen.outputs["Output"] == "pseudo", name="pseudo-round-kept"):
                    finish_round(settings, second, retrained, dataset, model_name, min_improvement, tracking_uri,
                                 experiment, round_selection=selection)
                with dsl.Else(name="base-round-kept"):
                    finish_round(settings, first, base, dataset, model_name, min_improvement, tracking_uri,
                                 experiment, round_selection=selection)
            with dsl.Else(name="no-pseudo-round"):
                finish_round(settings, first, base, dataset, model_name, min_improvement, tracking_uri, experiment)

    return full_pipeline


full_pipeline = build_full_pipeline()

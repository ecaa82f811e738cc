"""The scheduled pipeline: retrain when new labelled data has arrived.

    check inbox (batches the champion's dataset version does not include)
      none -> record "no new data" and end
      some -> merge into a new dataset version (new hash) -> prepare
              -> fine-tune each champion architecture from the champion's weights
              -> predict / evaluate -> ensemble -> register (promoted only if better
                 than the champion on the same holdout: the dataset's val.json, which
                 merges never touch)
    all under an ExitHandler that records how the run ended.

Its parameters hold no dataset version: the run finds it (the champion's), so one
recurring run definition (make schedule) keeps working as data arrives.
"""

# No `from __future__ import annotations`: KFP needs real annotation objects.
from kfp import dsl

from components.check_inbox import check_inbox
from components.fetch_champion import fetch_champion
from components.merge_inbox import merge_inbox
from components.prepare_data import prepare_data
from components.record_no_new_data import record_no_new_data
from components.record_status import record_status
from pipelines.cluster import DEFAULT_SETTINGS, ClusterSettings, cpu_task
from pipelines.full import (
    DEFAULT_CHECKPOINT_STORE,
    DEFAULT_DATA_STORE,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
)
from pipelines.graph import ensemble_round, finish_round, train_round, trainer_preflight
from trashseg import secrets

DEFAULT_FINETUNE_ITERATIONS = 20_000


def build_retrain_pipeline(settings: ClusterSettings = DEFAULT_SETTINGS):
    @dsl.pipeline(
        name="trashseg-retrain",
        description="When new labelled batches are in the inbox: merge them into a new dataset version, "
        "fine-tune the champion, promote only if better on the same holdout.",
    )
    def retrain_pipeline(
        data_store: str = DEFAULT_DATA_STORE,
        iterations: int = DEFAULT_FINETUNE_ITERATIONS,
        image_size: int = 512,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        train_settings: list[str] = [],  # noqa: B006 (KFP reads defaults from the signature)
        ensemble_settings: list[str] = [],  # noqa: B006
        model_name: str = DEFAULT_MODEL_NAME,
        min_improvement: float = 0.0,
        tracking_uri: str = secrets.MLFLOW_TRACKING_URI,
        experiment: str = DEFAULT_EXPERIMENT,
        checkpoint_store: str = DEFAULT_CHECKPOINT_STORE,
    ):
        status = cpu_task(
            record_status(pipeline="retrain", tracking_uri=tracking_uri, experiment=experiment),
            settings,
            mlflow=True,
        )
        with dsl.ExitHandler(status, name="retrain-run"):
            inbox = cpu_task(
                check_inbox(data_store=data_store, model_name=model_name, tracking_uri=tracking_uri),
                settings,
                object_store=True,
                mlflow=True,
            ).set_display_name("check-inbox")
            with dsl.If(inbox.outputs["new_batches"] > 0, name="new-data"):
                merged = cpu_task(
                    merge_inbox(data_store=data_store, base_version=inbox.outputs["base_version"]),
                    settings,
                    object_store=True,
                ).set_display_name("merge-inbox")
                champion = cpu_task(
                    fetch_champion(model_name=model_name, tracking_uri=tracking_uri),
                    settings,
                    mlflow=True,
                ).set_display_name("fetch-champion")
                prepared = cpu_task(
                    prepare_data(source=data_store, dataset_version=merged.output, val_fraction=val_fraction, seed=split_seed),
                    settings,
                    object_store=True,
                    cache=True,
                ).set_display_name("prepare")
                trainer = trainer_preflight(settings)  # ENGINE=trainjob: Trainer usable here, checked on a CPU
                if trainer is not None:
                    prepared.after(trainer)
                dataset = prepared.outputs["dataset"]
                finetuned = train_round(
                    settings, champion.outputs["Output"], dataset, merged.output, iterations, image_size,
                    train_settings, checkpoint_store, tracking_uri, experiment, stage="finetune",
                    default_iterations=DEFAULT_FINETUNE_ITERATIONS,
                    init_bundle=champion.outputs["bundle"], weights_store=data_store,
                )
                ensembled = ensemble_round(settings, finetuned, dataset, ensemble_settings, name="ensemble-finetune")
                finish_round(
                    settings, ensembled, finetuned, dataset, model_name, min_improvement, tracking_uri, experiment,
                    submission=False,
                )
            with dsl.Else(name="no-new-data"):
                cpu_task(
                    record_no_new_data(
                        base_version=inbox.outputs["base_version"], tracking_uri=tracking_uri, experiment=experiment
                    ),
                    settings,
                    mlflow=True,
                ).set_display_name("no-new-data")

    return retrain_pipeline


retrain_pipeline = build_retrain_pipeline()

"""The building blocks both pipelines are wired from: a training round, an ensemble, the finish."""

# No `from __future__ import annotations`: KFP needs real annotation objects.
from kfp import dsl

from components.bundle_models import bundle_models
from components.check_trainer import check_trainer
from components.ensemble_crf import ensemble_crf
from components.evaluate import evaluate
from components.launch_training import launch_training
from components.make_submission import make_submission
from components.predict import predict
from components.register_model import register_model
from components.train_model import train_model
from pipelines.cluster import cpu_task, gpu_task, launcher_task


def trainer_preflight(settings):
    """ENGINE=trainjob: a first CPU task that fails at once, before any GPU is requested, when
    the cluster cannot run TrainJobs (no CRD, no runtime, no RBAC). None with ENGINE=pod."""
    if settings.engine != "trainjob":
        return None
    return launcher_task(check_trainer(runtime=settings.trainer_runtime), settings).set_display_name("check-trainer")


def train_task(settings, *, stage, default_iterations, **inputs):
    """One architecture's training: a TrainJob launcher (ENGINE=trainjob) or the GPU pod itself (pod)."""
    if settings.engine == "trainjob":
        job = settings.job_settings(default_iterations).to_dict()
        return launcher_task(
            launch_training(**inputs, stage=stage, job=job, task=f"train-{stage}"),
            settings, cache=True, object_store=True,
        ).set_display_name(f"train-{stage}")
    return gpu_task(
        train_model(**inputs, stage=stage),
        settings, retry_iterations=default_iterations, cache=True, object_store=True, mlflow=True,
    ).set_display_name(f"train-{stage}")


def train_round(
    settings, architectures, dataset, dataset_version, iterations, image_size, train_settings,
    checkpoint_store, tracking_uri, experiment, *, stage, default_iterations, pseudo_dataset=None, pseudo_ratio=None,
    init_bundle=None, weights_store="",
):
    """ParallelFor over architectures: train, predict val and test (one task), evaluate on val; then
    bundle the round's models. `default_iterations` (the pipeline's default, known at compile
    time) sizes the training retry window (pod) or the TrainJob's timeout (trainjob). `weights_store`: where the pretrained starts are
    mirrored (the data store); tasks read them from there with no network."""
    # The loop has no name=: a named ParallelFor followed by dsl.Collected makes the consumers
    # fail with "cannot find producer task" on KFP backends up to 2.15 (kubeflow/pipelines#13239).
    with dsl.ParallelFor(architectures, parallelism=settings.parallelism) as architecture:
        extra = {} if pseudo_dataset is None else {"pseudo_dataset": pseudo_dataset, "pseudo_ratio": pseudo_ratio}
        if init_bundle is not None:
            extra["init_bundle"] = init_bundle
        trained = train_task(
            settings, stage=stage, default_iterations=default_iterations,
            dataset=dataset, architecture=architecture, iterations=iterations, image_size=image_size,
            dataset_version=dataset_version, train_settings=train_settings, checkpoint_store=checkpoint_store,
            tracking_uri=tracking_uri, experiment=experiment, weights_store=weights_store, **extra,
        )
        model = trained.outputs["model"]
        predicted = gpu_task(
            predict(model=model, dataset=dataset),
            settings, retry_iterations=None, cache=False, object_store=False, mlflow=False,
        ).set_display_name(f"predict-{stage}")
        cpu_task(
            evaluate(predictions=predicted.outputs["val_predictions"], dataset=dataset, split="val", title=architecture),
            settings,
        ).set_display_name(f"evaluate-{stage}")
    # Collected outputs are consumed in this group only (KFP cannot pass them into an If/Else
    # group); the bundle is a plain artifact that can go anywhere.
    bundled = cpu_task(
        bundle_models(models=dsl.Collected(model), dataset=dataset, dataset_version=dataset_version),
        settings,
    ).set_display_name(f"bundle-{stage}")
    return {
        "bundle": bundled.outputs["bundle"],
        "val": dsl.Collected(predicted.outputs["val_predictions"]),
        "test": dsl.Collected(predicted.outputs["test_predictions"]),
    }


def ensemble_round(settings, stage_outputs, dataset, ensemble_settings, *, name):
    ensembled = cpu_task(
        ensemble_crf(
            val_predictions=stage_outputs["val"], test_predictions=stage_outputs["test"], dataset=dataset,
            ensemble_settings=ensemble_settings,
        ),
        settings, cpu=settings.ensemble_cpu, memory=settings.ensemble_memory,
    ).set_display_name(name)
    cpu_task(
        evaluate(predictions=ensembled.outputs["ensemble"], dataset=dataset, split="val", title=name, subfolder="final/val"),
        settings,
    ).set_display_name(f"evaluate-{name}")
    return ensembled


def finish_round(
    settings, ensembled, stage_outputs, dataset, model_name, min_improvement, tracking_uri, experiment, *, submission=True,
    round_selection=None,
):
    """Submission from the final ensemble; its held-out val score decides the registry
    promotion. `round_selection`: select_round's output, recorded with the registration."""
    if submission:
        cpu_task(
            make_submission(ensemble=ensembled.outputs["ensemble"], dataset=dataset),
            settings,
        ).set_display_name("submission")
    extra = {} if round_selection is None else {"round_selection": round_selection}
    cpu_task(
        register_model(
            bundle=stage_outputs["bundle"], dataset=dataset, score=ensembled.outputs["Output"], model_name=model_name,
            min_improvement=min_improvement, tracking_uri=tracking_uri, experiment=experiment, **extra,
        ),
        settings,
        mlflow=True,
    ).set_display_name("register")

"""The winning recipe after training: ensemble, DenseCRF, consensus overwrite, gating.

Stages, each written as a prediction folder per split under OUT/stages/<stage>/<split>:

    soft_vote   weighted mean of the models' probabilities (weights given or fitted on val)
    hard_vote   per-pixel majority of the models' masks, ties to the higher-ranked model
    crf         DenseCRF on the soft vote (removes noise, but erases small objects)
    consensus   after CRF, pixels where >= k models agree on a foreground class get it back
    gating      per class, keep the CRF/consensus result or the plain soft vote, whichever
                had the higher IoU on val (decided on val, applied to test)

Every stage and every single model is scored on the validation split. Weights and gating
are fitted on val too, so the scores that count are held out: the stages also run on
folds of val, each fold with the parameters fitted on the other folds (OUT/heldout/stages),
and the summed confusion matrices give each stage's held-out val mIoU. The final output
(OUT/final/<split>, fitted on all of val) is the best stage by held-out mIoU unless one is
pinned; the report shows held-out and in-sample figures side by side.

Modules, in the order a run uses them (`recipe.run_recipe` is the one entry point, for the
`ensemble_crf` pipeline component and `trashseg ensemble`):

    config      the stage names and `EnsembleConfig`
    inputs      the prediction folders opened and checked against the dataset; model names
    weight_fit  soft-vote weights, given or fitted on val images
    holdout     cross-fit folds, the passes and their groups, held-out scores, the best stage
    stages      each stage run over a pass (`StageRunner`)
    jobs        the stages' per-image work in worker processes (`StageJob` subclasses)
    voting      the per-pixel operations: votes, consensus overwrite, gating
    outputs     OUT/final/<split>, ensemble_config.json, the stage report
"""

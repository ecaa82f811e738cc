"""KFP pipeline definitions: wiring only. Cluster settings (images, GPUs, tolerations,
shared memory, resource requests, retries, caching, secrets) are set here and nowhere else.

    full.py     prepare -> train (per architecture) -> predict/evaluate -> ensemble + CRF
                -> pseudo-labels -> retrain -> ensemble -> submission + register
    retrain.py  the scheduled run: new inbox batches -> merge -> fine-tune the champion
                -> evaluate on the fixed holdout -> promote only if better
    compile.py  `python -m pipelines.compile` -> build/full.yaml, build/retrain.yaml
    local.py    the same pipelines on this machine through kfp.local (make demo)
"""

"""KFP components: each a typed signature plus one call into `trashseg` (no logic here).

Lightweight Python components: KFP ships only the function's source into the task, so
every import happens inside the function body. `install_kfp_package=False` because the
project images already hold the pinned kfp (and a local run uses the current venv).
"""

"""One command that proves the GPU path on a lent device: `make gpu-check`.

    python -m benchmarks.gpu_check [--dry] [--out DIR] [--budget-s S] [--arch NAME ...]
                                   [--skip natten|options|ddp ...] [--peak-tflops T]

Rows, in this order (a row still running at its time limit is stopped and reported as a
timeout with what it measured so far; rows not started when the budget is spent are skipped):
- natten: its fused kernels against `neighborhood_attention_reference` (pure PyTorch, fp32)
  at DiNAT-L's kernel 11 with dilations 1, 2 and 5, in fp32 and bf16, forward and backward,
  within the tolerances in `NATTEN_TOLERANCE`;
- train, one per architecture: the recipe's default list (pipelines/full.py) plus
  segformer-b5, eomt-dinov2-l and maskdino-swin-l, random init: 30 bf16 training steps at
  512x512 at the largest batch of `GPU_PLAN.batches` that fits (the loss must stay finite),
  images/s, peak memory, GFLOPs per image from our own counter and MFU
  (`trashseg.models.complexity`: x3 for forward and backward, over the card's dense bf16
  peak; a card missing from that table gives "n/a"), then the predict rate
  (`trashseg.predict.predict_probabilities`, bf16) without and with TTA (flip x 3 scales);
- options: `channels_last` and `compile` off and on (four runs) for Mask2Former-Swin-L, each
  timed with its warm-up (compilation) and its steps;
- ddp: with two or more GPUs, `train` in 2 NCCL processes against 1 process with
  grad_accum=2 (the same global batch: equal up to float order) and against 1 process with
  half the batch (which must differ far more).

Nothing comes from the network: models start from random init, data is generated.
Each row runs in a child process of its own (forked, so the imports are paid once; this
process never initialises CUDA) with its own time limit, so an out-of-memory, a CUDA error,
a crash or a hang ends that row only; what the row measured before it stopped is kept.
`gpu_check.json` and `gpu_check.md` in --out are rewritten after every row, so a run cut
short still leaves every finished row. The default budget for the rows, 450 s, is sized to
keep a whole run on one H200 under 8 minutes with the imports.

--dry (make gpu-check DRY=1) runs the same rows on CPU with the tiny twins at 64x64 and a
few steps (tests/test_gpu_check.py runs it): on CPU natten has no backward (forward only is
compared), `compile` uses the "eager" backend (Dynamo's graph capture without code
generation) on SegFormer-B0-tiny and only with channels_last, DDP runs on gloo, and MFU is
"n/a". About 30 s of CPU time, nearly all fixed costs: importing transformers (~5 s per process:
this one and the two DDP workers), Dynamo's tracing (~5 s) and the rows' model builds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import gc
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# torch.cuda.is_available() without NVML initialises CUDA, after which forked children cannot
# use it; this process must stay CUDA-free (the rows run in forked children).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402

from benchmarks.train_throughput import NUM_CLASSES, inference_throughput, train_throughput  # noqa: E402
from trashseg.fileio import write_text  # noqa: E402
from trashseg.models import build_model  # noqa: E402
from trashseg.models.complexity import NOT_AVAILABLE, model_gflops, peak_bf16_tflops, training_mfu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXTRA_ARCHITECTURES = ["segformer-b5", "eomt-dinov2-l", "maskdino-swin-l"]
# No BatchNorm (SyncBatchNorm on CUDA would see 2 images where grad_accum sees 1 per
# micro-batch, so the runs would differ by more than float order); Swin also takes DDP's
# find_unused_parameters path.
DDP_ARCHITECTURE = "mask2former-swin-t"
OPTION_RUNS = ((False, False), (True, False), (False, True), (True, True))  # (channels_last, compile)
# Largest |fused - reference| over the reference's largest |value|, forward and gradients.
# fp32 as tests/models/test_neighborhood_attention.py's GPU test; bf16 (8-bit mantissa: one
# rounding of a unit value is 4e-3, and the kernels accumulate in another order) looser.
NATTEN_TOLERANCE = {"float32": (2e-3, 2e-2), "bfloat16": (2e-2, 5e-2)}
NATTEN_CASES = [(11, 1), (11, 2), (11, 5)]  # DiNAT-L's kernel with dilations of its stages
SKIPPABLE = ("natten", "options", "ddp")


@dataclass(frozen=True)
class Plan:
    """The sizes of one mode: full-size models on a GPU, or tiny twins on CPU (--dry)."""

    dry: bool
    image_size: int
    batches: tuple[int, ...]  # tried largest first; the first that fits is measured
    train_steps: int
    warmup_steps: int
    predict_batch: int
    predict_steps: int
    options_batch: int
    options_steps: int
    natten_shape: tuple[int, int, int, int, int]  # batch, height, width, heads, head_dim
    natten_cases: tuple[tuple[int, int], ...]
    ddp_size: int
    options_architecture: str
    option_runs: tuple[tuple[bool, bool], ...]  # (channels_last, compile) pairs of the options row
    row_limit_s: dict[str, float] = field(default_factory=dict)  # per row kind
    budget_s: float = 450.0

    def architecture(self, name: str) -> str:
        return f"{name}-tiny" if self.dry and not name.endswith("-tiny") else name


GPU_PLAN = Plan(
    dry=False, image_size=512, batches=(16, 8, 4, 2, 1), train_steps=30, warmup_steps=3, predict_batch=8,
    predict_steps=3, options_batch=8, options_steps=10, natten_shape=(2, 64, 64, 12, 32),
    natten_cases=tuple(NATTEN_CASES), ddp_size=256, options_architecture="mask2former-swin-l",
    option_runs=OPTION_RUNS,
    row_limit_s={"device": 60, "natten": 60, "train": 75, "options": 240, "ddp": 180}, budget_s=450.0,
)
# Dynamo traces Mask2Former-tiny's loss in about a minute per run on two cores, SegFormer-tiny's
# in 3-5 s of CPU (6 graphs, the "eager" backend: no code generation): enough to keep the compile
# path from rotting. One compiled run, with channels_last: on CPU the compile-only run would trace
# the same code again (~3 s) and exercise nothing the other three do not.
DRY_PLAN = Plan(
    dry=True, image_size=64, batches=(2, 1), train_steps=2, warmup_steps=1, predict_batch=2, predict_steps=1,
    options_batch=2, options_steps=1, natten_shape=(1, 20, 20, 2, 8), natten_cases=((5, 1), (5, 2), (3, 5)),
    ddp_size=64, options_architecture="segformer-b0-tiny", option_runs=((False, False), (True, False), (True, True)),
    row_limit_s={"device": 60, "natten": 60, "train": 120, "options": 180, "ddp": 240}, budget_s=1200.0,
)


class CheckFailed(Exception):
    """A row ran but its result is wrong (a tolerance exceeded, runs that should agree differ)."""


def recipe_architectures() -> list[str]:
    """The recipe's default list, read from pipelines/full.py's source: that module is KFP
    wiring and imports kfp, which a lent device's image lacks."""
    tree = ast.parse((REPO / "pipelines" / "full.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "RECIPE_ARCHITECTURES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("pipelines/full.py no longer assigns RECIPE_ARCHITECTURES; update benchmarks/gpu_check.py")


def plan_rows(plan: Plan, architectures: list[str], skip: tuple[str, ...]) -> list[dict]:
    rows = [] if "natten" in skip else [{"kind": "natten", "name": "natten"}]
    rows += [{"kind": "train", "name": plan.architecture(a), "arch": plan.architecture(a)} for a in architectures]
    if "options" not in skip:
        arch = plan.options_architecture
        rows.append({"kind": "options", "name": f"options {arch}", "arch": arch})
    if "ddp" not in skip:
        arch = plan.architecture(DDP_ARCHITECTURE)
        rows.append({"kind": "ddp", "name": f"ddp {arch}", "arch": arch})
    return rows


# ----------------------------------------------------------------------------- rows (children)


class RowWriter:
    """What a row measured so far, rewritten to its file after each phase (a killed row keeps it)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fields = path, {}

    def update(self, **fields) -> None:
        self.fields.update(fields)
        write_text(self.path, json.dumps(self.fields, default=str))


def _device(plan: Plan) -> torch.device:
    return torch.device("cpu" if plan.dry else "cuda")


def _free() -> None:
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def row_device(row: dict, plan: Plan, out: RowWriter) -> None:
    """The card, its count and the software versions (also: whether CUDA works at all)."""
    import natten
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "natten": natten.__version__,
            "natten_libnatten": bool(getattr(natten, "HAS_LIBNATTEN", False)), "python": sys.version.split()[0]}
    if plan.dry:
        out.update(name="CPU", count=0, **info)
        return
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible; run `make gpu-check DRY=1` for the CPU check")
    props = torch.cuda.get_device_properties(0)
    out.update(name=torch.cuda.get_device_name(0), count=torch.cuda.device_count(), cuda=torch.version.cuda,
               memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}", **info)


def fit_batch(try_batch: Callable[[int], object], batches: tuple[int, ...]) -> tuple[int, object, dict[str, str]]:
    """(batch, what try_batch returned, {batch: outcome}) for the largest batch whose
    `try_batch` does not run out of device memory."""
    tried: dict[str, str] = {}
    for batch in batches:
        try:
            result = try_batch(batch)
        except torch.cuda.OutOfMemoryError:
            tried[str(batch)] = "out of memory"
        else:
            tried[str(batch)] = "fits"
            return batch, result, tried
        _free()  # after the except clause, whose traceback held the failed batch's tensors
    raise torch.cuda.OutOfMemoryError(f"no batch of {list(batches)} fits: {tried}")


def _gib(mib: float) -> float:
    return round(mib / 1024, 3)


def row_train(row: dict, plan: Plan, out: RowWriter) -> None:
    """Training rate at the largest batch that fits, GFLOPs per image, predict rate +- TTA."""
    device, amp = _device(plan), None if plan.dry else torch.bfloat16
    torch.manual_seed(0)
    with device:  # initialised on the device: a full-size model builds in seconds there
        model = build_model(row["arch"], NUM_CLASSES).to(device)
    out.update(params_m=round(model.parameter_count() / 1e6, 2), image_size=plan.image_size)

    def measure(batch: int) -> tuple[float, float, float]:
        model.zero_grad(set_to_none=True)  # a larger batch that ran out of memory may have left some
        return train_throughput(model, device, plan.image_size, batch, plan.train_steps, amp, warmup=plan.warmup_steps)

    batch, (rate, peak_mib, loss), tried = fit_batch(measure, plan.batches)
    out.update(batch=batch, batches_tried=tried, train_steps=plan.train_steps, train_images_per_s=rate,
               peak_memory_gib=_gib(peak_mib), last_loss=loss)
    _free()
    out.update(gflops_per_image=model_gflops(model, plan.image_size))
    model.set_training_progress(1, 1)  # infer as a trained model does (EoMT: masks annealed away)
    for key, tta in (("predict_images_per_s", False), ("predict_tta_images_per_s", True)):
        out.update(**{key: inference_throughput(model, device, plan.image_size, plan.predict_batch,
                                                plan.predict_steps, amp, tta)})
    if not math.isfinite(loss):
        raise CheckFailed(f"the training loss is {loss} after {plan.train_steps} steps (amp {amp})")


def row_options(row: dict, plan: Plan, out: RowWriter) -> None:
    """channels_last and compile off and on, each from a fresh model; a run that fails is
    recorded and the next one still runs."""
    device, amp = _device(plan), None if plan.dry else torch.bfloat16
    runs, failures = [], []
    for channels_last, compile in plan.option_runs:
        run = {"channels_last": channels_last, "compile": compile, "batch": plan.options_batch}
        try:
            torch.manual_seed(0)
            with device:
                model = build_model(row["arch"], NUM_CLASSES).to(device)
            start = time.perf_counter()
            rate, peak_mib, _ = train_throughput(model, device, plan.image_size, plan.options_batch, plan.options_steps,
                                              amp, warmup=plan.warmup_steps, channels_last=channels_last, compile=compile)
            run.update(images_per_s=rate, peak_memory_gib=_gib(peak_mib),
                       total_s=round(time.perf_counter() - start, 1))  # compile time included
        except Exception as error:  # noqa: BLE001 (recorded, and the row fails after the other runs)
            run["error"] = f"{type(error).__name__}: {error}"[:500]
            failures.append(run)
        model = None
        _free()
        runs.append(run)
        out.update(runs=runs)
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(plan.option_runs)} runs failed: {failures[0]['error']}")


def _natten_errors(shape, kernel_size: int, dilation: int, dtype: torch.dtype, device, backward: bool) -> dict:
    # na2d itself: what DiNAT's attention calls on CUDA (on CPU it runs the reference instead).
    from natten.functional import na2d

    from trashseg.models.neighborhood_attention import neighborhood_attention_reference

    generator = torch.Generator().manual_seed(kernel_size * 100 + dilation)
    q, k, v, upstream = (torch.randn(shape, generator=generator).to(device) for _ in range(4))
    inputs = [t.to(dtype).requires_grad_(backward) for t in (q, k, v)]
    exact = [t.detach().float().requires_grad_(backward) for t in inputs]  # the same values, fp32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # natten's note that CPU flex attention runs uncompiled
        fused = na2d(*inputs, kernel_size=kernel_size, dilation=dilation)
    reference = neighborhood_attention_reference(*exact, kernel_size, dilation)

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))

    result = {"forward": relative(fused, reference), "backward": None}
    if backward:
        fused_grads = torch.autograd.grad(fused, inputs, upstream.to(dtype))
        reference_grads = torch.autograd.grad(reference, exact, upstream)
        result["backward"] = max(relative(a, b) for a, b in zip(fused_grads, reference_grads, strict=True))
    return result


def _natten_backend(device, shape, dtype) -> str:
    try:
        from natten.backends import choose_backend

        q = torch.zeros(shape, device=device, dtype=dtype)
        return choose_backend(q, q, q, torch_compile=False)
    except Exception as error:  # noqa: BLE001 (informational: natten may rename it)
        return f"unknown ({type(error).__name__})"


def row_natten(row: dict, plan: Plan, out: RowWriter) -> None:
    """natten's kernels against the reference, forward and backward (forward only on CPU, where
    natten has no backward), each case within NATTEN_TOLERANCE."""
    device = _device(plan)
    dtypes = (torch.float32,) if plan.dry else (torch.float32, torch.bfloat16)
    cases, failed = [], []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        tol_forward, tol_backward = NATTEN_TOLERANCE[name]
        for kernel_size, dilation in plan.natten_cases:
            errors = _natten_errors(plan.natten_shape, kernel_size, dilation, dtype, device, backward=not plan.dry)
            ok = errors["forward"] <= tol_forward and (errors["backward"] is None or errors["backward"] <= tol_backward)
            case = {"dtype": name, "kernel_size": kernel_size, "dilation": dilation, **errors,
                    "tolerance_forward": tol_forward, "tolerance_backward": tol_backward, "ok": ok}
            cases.append(case)
            failed += [] if ok else [case]
            out.update(shape=list(plan.natten_shape), backend=_natten_backend(device, plan.natten_shape, dtype),
                       cases=cases)
    if failed:
        worst = failed[0]
        raise CheckFailed(f"natten differs from the reference beyond tolerance in {len(failed)} case(s), e.g. "
                          f"{worst['dtype']} k={worst['kernel_size']} d={worst['dilation']}: forward "
                          f"{worst['forward']:.2e}, backward {worst['backward']}")


def _flat_weights(state: dict) -> torch.Tensor:
    """The trained parameters (BatchNorm running statistics left out: under DDP they are rank 0's)."""
    return torch.cat([v.float().ravel() for k, v in state.items() if v.is_floating_point() and "running" not in k])


def row_ddp(row: dict, plan: Plan, out: RowWriter) -> None:
    """2 processes x batch 1 against 1 process x batch 1 x grad_accum 2 (and x grad_accum 1)."""
    if not plan.dry and torch.cuda.device_count() < 2:
        out.update(skipped=f"needs 2 GPUs; this machine shows {torch.cuda.device_count()}")
        return
    from trashseg.config import from_mapping
    from trashseg.data.layout import PreparedDataset
    from trashseg.data.prepare import prepare_dataset
    from trashseg.data.sample import generate_sample_dataset
    from trashseg.launch import run_per_process
    from trashseg.training import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as folder:
        root = Path(folder)
        generate_sample_dataset(root / "raw", images=12, size=plan.ddp_size + plan.ddp_size // 4, seed=0)
        prepare_dataset(root / "raw", root / "data")
        base = dict(architecture=row["arch"], pretrained="none", image_size=plan.ddp_size, batch_size=1,
                    iterations=3, warmup_iters=1, lr=1e-3, eval_interval=0, checkpoint_interval=3, log_interval=1,
                    num_workers=0, tracking={"enabled": False})
        weights = {}
        for name, processes, accum in (("two_processes", 2, 1), ("one_process_accum2", 1, 2), ("half_batch", 1, 1)):
            config = from_mapping(TrainConfig, {**base, "grad_accum": accum})
            run_per_process(train, (config, str(root / "data"), str(root / name)), processes)
            weights[name] = _flat_weights(torch.load(root / name / "last.pt", weights_only=True)["model"])
        torch.manual_seed(0)  # TrainConfig's seed: the weights every run started from
        start = _flat_weights(build_model(row["arch"], PreparedDataset(root / "data").classes().num_classes).state_dict())
    moved = (weights["one_process_accum2"] - start).norm()
    same = float((weights["two_processes"] - weights["one_process_accum2"]).norm() / moved)
    half = float((weights["half_batch"] - weights["one_process_accum2"]).norm() / moved)
    out.update(backend="gloo" if plan.dry else "nccl", same_global_batch=same, half_batch=half)
    if not (same < 0.05 and same < half / 5):
        raise CheckFailed(f"2 processes differ from grad_accum=2 by {same:.3f} of the distance trained "
                          f"(half the batch: {half:.3f}); expected < 0.05 and far below it")


ROWS: dict[str, Callable[[dict, Plan, RowWriter], None]] = {
    "device": row_device, "natten": row_natten, "train": row_train, "options": row_options, "ddp": row_ddp,
}


# ----------------------------------------------------------------------------- the parent


def _child(kind: str, row: dict, plan: Plan, path: str) -> None:
    """A row in a forked child: its own process group (so a timeout ends its helpers too)."""
    os.setsid()
    out = RowWriter(Path(path))
    try:
        ROWS[kind](row, plan, out)
    except BaseException as error:
        out.update(error=f"{type(error).__name__}: {error}"[:2000],
                   traceback="".join(traceback.format_exception(error)[-6:])[-4000:])
        os._exit(1)
    os._exit(0)


def run_row(row: dict, plan: Plan, limit_s: float, scratch: Path) -> dict:
    """Run one row in a child process with a time limit; its record (status, seconds, error and
    whatever it measured). Never raises for what happens inside the row."""
    path = scratch / f"row-{len(list(scratch.iterdir()))}.json"
    process = multiprocessing.get_context("fork").Process(target=_child, args=(row["kind"], row, plan, str(path)))
    start = time.monotonic()
    process.start()
    try:
        process.join(limit_s)
        timed_out = process.is_alive()
    finally:  # also on Ctrl-C: the row's process group is its own, so the terminal's signal misses it
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.join()
    measured = json.loads(path.read_text()) if path.exists() else {}
    record = {"kind": row["kind"], "name": row["name"], "seconds": round(time.monotonic() - start, 1)}
    error, skipped = measured.pop("error", None), measured.pop("skipped", None)
    if timed_out:
        record.update(status="timeout", error=f"stopped at its time limit of {limit_s:.0f} s")
    elif process.exitcode != 0:
        reason = error or f"the row's process ended with exit code {process.exitcode} (a crash; see the log above)"
        record.update(status="failed", error=reason)
    else:
        record.update(status="skipped" if skipped else "ok", error=skipped)
    return {**record, **measured}


@dataclass
class Check:
    """The run's state, written to gpu_check.json and gpu_check.md after every row."""

    plan: Plan
    out_dir: Path
    peak_override: float | None = None
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    device: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    finished: bool = False

    def peak(self) -> tuple[float | None, str]:
        if self.peak_override:
            return self.peak_override, "--peak-tflops"
        found = peak_bf16_tflops(self.device.get("name", "")) if not self.plan.dry else None
        return found, ("trashseg.models.complexity.DENSE_BF16_PEAK_TFLOPS" if found else "not in the table")

    def add(self, record: dict) -> None:
        if record["kind"] == "train" and "train_images_per_s" in record and "gflops_per_image" in record:
            record["mfu"] = training_mfu(record["gflops_per_image"], record["train_images_per_s"], self.peak()[0])
        elif record["kind"] == "train":
            record["mfu"] = NOT_AVAILABLE
        self.rows.append(record)

    def to_json(self) -> dict:
        peak, source = self.peak()
        return {"tool": "benchmarks.gpu_check", "mode": "dry (CPU, tiny twins)" if self.plan.dry else "gpu",
                "started": self.started, "elapsed_s": round(self.elapsed_s, 1), "finished": self.finished,
                "device": self.device, "peak_bf16_tflops": peak if peak else NOT_AVAILABLE, "peak_source": source,
                "plan": dataclasses.asdict(self.plan), "rows": self.rows}

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        result = self.to_json()
        write_text(self.out_dir / "gpu_check.json", json.dumps(result, indent=2, default=str) + "\n")
        write_text(self.out_dir / "gpu_check.md", render_markdown(result))


def _next_row(row: dict, plan: Plan, check: Check, start: float, scratch: Path) -> dict:
    """The row's record: run within what is left of the budget, or skipped with the reason."""
    left = plan.budget_s - (time.monotonic() - start)
    reason = None
    if check.device["status"] != "ok":
        reason = f"not started: no usable device ({check.device['error']})"
    elif left < 5:
        reason = f"not started: the time budget of {plan.budget_s:.0f} s was spent"
    if reason:
        return {"kind": row["kind"], "name": row["name"], "status": "skipped", "seconds": 0.0, "error": reason}
    return run_row(row, plan, min(plan.row_limit_s[row["kind"]], left), scratch)


def run_check(plan: Plan, out_dir: Path, architectures: list[str], skip=(), peak_override=None) -> Check:
    """Every row within the plan's budget; gpu_check.json / .md rewritten after each."""
    check, start = Check(plan, Path(out_dir), peak_override), time.monotonic()
    rows = plan_rows(plan, architectures, tuple(skip))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        check.device = run_row({"kind": "device", "name": "device"}, plan, plan.row_limit_s["device"], Path(scratch))
        print(f"[device] {summary(check.device)}", flush=True)
        try:
            for index, row in enumerate(rows, 1):
                check.add(_next_row(row, plan, check, start, Path(scratch)))
                check.elapsed_s = time.monotonic() - start
                check.write()
                print(f"[{index}/{len(rows)}] {summary(check.rows[-1])}", flush=True)
        except KeyboardInterrupt:
            check.elapsed_s = time.monotonic() - start
            check.write()
            print("gpu-check: stopped by the user; the rows so far are written", file=sys.stderr)
            raise
    check.elapsed_s, check.finished = time.monotonic() - start, True
    check.write()
    return check


# ----------------------------------------------------------------------------- the report


def _number(value, digits: int = 1, suffix: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return f"{value:.{digits}f}{suffix}"


def _gflops(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-"


def _mfu(value) -> str:
    return f"{value:.1%}" if isinstance(value, float) else str(value or NOT_AVAILABLE)


def summary(record: dict) -> str:
    """One line per row for the console."""
    text = f"{record['name']}: {record['status']} in {record['seconds']:.0f} s"
    if record["kind"] == "train" and "train_images_per_s" in record:
        text += (f" (batch {record['batch']}, {record['train_images_per_s']:.1f} img/s, "
                 f"MFU {_mfu(record.get('mfu'))})")
    return text + (f": {record['error']}" if record.get("error") else "")


def render_markdown(result: dict) -> str:
    device, plan = result["device"], result["plan"]
    peak = result["peak_bf16_tflops"]
    lines = [
        f"# GPU check: {device['name'] if device.get('status') == 'ok' else 'no usable device'}, {result['started']}", "",
        f"Mode {result['mode']}; torch {device.get('torch', '?')}, CUDA {device.get('cuda', '-')}, transformers "
        f"{device.get('transformers', '?')}, natten {device.get('natten', '?')} (compiled kernels: "
        f"{'yes' if device.get('natten_libnatten') else 'no'}); {device.get('count', 0)} GPU(s). MFU against "
        f"{_number(peak, 1, ' TFLOP/s') if peak != NOT_AVAILABLE else 'no known peak (n/a)'} dense bf16 "
        f"({result['peak_source']}). {result['elapsed_s']:.0f} s"
        f"{'' if result['finished'] else ' so far (the run did not finish)'}; budget {plan['budget_s']:.0f} s.", "",
        f"Training: random init, {'fp32' if plan['dry'] else 'bf16'}, {plan['image_size']}x{plan['image_size']}, "
        f"{plan['train_steps']} timed steps after {plan['warmup_steps']} warm-up step(s), the largest batch of "
        f"{plan['batches']} that fits; MFU = GFLOPs/image x 3 x img/s / peak. Predict: batch "
        f"{plan['predict_batch']}, TTA = flip x 3 scales.", "",
        "| architecture | params | batch | train img/s | peak GiB | GFLOPs/img | MFU | predict img/s | +TTA img/s | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = result["rows"]
    for r in (r for r in rows if r["kind"] == "train"):
        lines.append(
            f"| `{r['name']}` | {_number(r.get('params_m'), 1, 'M')} | {r.get('batch', '-')} "
            f"| {_number(r.get('train_images_per_s'), 2)} | {_number(r.get('peak_memory_gib'), 2)} "
            f"| {_gflops(r.get('gflops_per_image'))} | {_mfu(r.get('mfu'))} | {_number(r.get('predict_images_per_s'), 2)} "
            f"| {_number(r.get('predict_tta_images_per_s'), 2)} | {r['status']} |")
    lines += _natten_lines(rows) + _options_lines(rows, plan) + _ddp_lines(rows)
    problems = [r for r in rows if r["status"] in ("failed", "timeout")]
    if problems or result["device"].get("status") not in (None, "ok"):
        lines += ["", "## Failures", ""]
        if result["device"].get("status") not in (None, "ok"):
            lines.append(f"- device: {result['device'].get('error')}")
        lines += [f"- {r['name']} ({r['status']}): {r['error']}" for r in problems]
    return "\n".join(lines) + "\n"


def _natten_lines(rows: list[dict]) -> list[str]:
    natten = next((r for r in rows if r["kind"] == "natten"), None)
    if natten is None:
        return []
    lines = ["", f"natten kernels (backend {natten.get('backend', '?')}) against the PyTorch reference, "
                 f"q/k/v {natten.get('shape')}: largest error over the reference's largest value.", "",
             "| dtype | kernel | dilation | forward | backward | tolerance | ok |", "|---|---|---|---|---|---|---|"]
    for c in natten.get("cases", []):
        backward = "n/a (no CPU backward)" if c["backward"] is None else f"{c['backward']:.2e}"
        lines.append(f"| {c['dtype']} | {c['kernel_size']} | {c['dilation']} | {c['forward']:.2e} | {backward} "
                     f"| {c['tolerance_forward']:g} / {c['tolerance_backward']:g} | {'yes' if c['ok'] else 'NO'} |")
    return lines + (["", f"natten row: {natten['status']}: {natten['error']}"] if natten.get("error") else [])


def _options_lines(rows: list[dict], plan: dict) -> list[str]:
    options = next((r for r in rows if r["kind"] == "options"), None)
    if options is None:
        return []
    lines = ["", f"`{options['name'].split()[-1]}`, batch {plan['options_batch']}, {plan['options_steps']} timed "
                 f"steps: channels_last and compile (total = warm-up with compilation + timed steps).", "",
             "| channels_last | compile | train img/s | peak GiB | total s | error |", "|---|---|---|---|---|---|"]
    for run in options.get("runs", []):
        lines.append(f"| {run['channels_last']} | {run['compile']} | {_number(run.get('images_per_s'), 2)} "
                     f"| {_number(run.get('peak_memory_gib'), 2)} | {_number(run.get('total_s'))} | {run.get('error', '')} |")
    return lines + ([] if options.get("runs") else [f"| - | - | - | - | - | {options['status']}: {options['error']} |"])


def _ddp_lines(rows: list[dict]) -> list[str]:
    ddp = next((r for r in rows if r["kind"] == "ddp"), None)
    if ddp is None:
        return []
    if "same_global_batch" not in ddp:
        return ["", f"DDP (`{ddp['name'].split()[-1]}`): {ddp['status']}: {ddp['error']}"]
    return ["", f"DDP (`{ddp['name'].split()[-1]}`, {ddp['backend']}): 2 processes vs grad_accum=2 on one differ by "
                f"{ddp['same_global_batch']:.4f} of the distance trained (half the batch: {ddp['half_batch']:.4f}); "
                f"{ddp['status']}."]


# ----------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, tiny twins, a few steps (the test of this script)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check", help="where gpu_check.json/.md go")
    parser.add_argument("--budget-s", type=float, help="stop starting rows after this many seconds (default: the plan's)")
    parser.add_argument("--arch", nargs="+", help="architectures (default: the recipe's list + "
                        f"{', '.join(EXTRA_ARCHITECTURES)}; tiny twins with --dry)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SKIPPABLE, help="rows to leave out")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak from its datasheet, for a card "
                        "missing from trashseg.models.complexity.DENSE_BF16_PEAK_TFLOPS")
    args = parser.parse_args(argv)
    if args.peak_tflops is not None and not 0 < args.peak_tflops < 1e5:
        parser.error(f"--peak-tflops {args.peak_tflops}: expected the datasheet's dense bf16 TFLOP/s, e.g. 989.5")
    plan = DRY_PLAN if args.dry else GPU_PLAN
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    architectures = args.arch or [*recipe_architectures(), *EXTRA_ARCHITECTURES]
    check = run_check(plan, args.out, architectures, args.skip, args.peak_tflops)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    bad = [r["name"] for r in check.rows if r["status"] in ("failed", "timeout")]
    if check.device.get("status") != "ok" or bad:
        print(f"gpu-check: {'no usable device' if check.device.get('status') != 'ok' else 'rows failed: ' + ', '.join(bad)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

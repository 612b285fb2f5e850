"""The long jobs on Ray: `ats search` and `ats benchmark` across the cores and GPUs of one machine or a cluster.

The paper's search scored 1,500 policies on 8 GPUs, and its benchmark trains a ResNet20-4 per
policy for 200 epochs; in one process on one device that takes days. Here the same work is cut
into Ray tasks, and everything else stays as in-process:

* **Units of work.** Search: a chunk of candidate policies scored (S_pri and S_acc) on the given
  models (`score_on_ray`). Benchmark (`cells_on_ray`): a victim model made (trained, or found in
  the run folder), and an attack cell; a cell takes its victim's object reference as an argument,
  so Ray starts it only once its model exists. Every task asks for `gpus_per_task` (fractions
  allowed) and `cpus_per_task`, and runs torch on that many threads.
* **Shared inputs once.** The score models and images, and the attacked images, are put in the
  object store once (`ray.put`) and reach a task as a reference that each worker process reads
  once (`_shared`); a victim's checkpoint travels as bytes in its task's result, so no task needs a
  file system shared with the driver (the data folder, `ATS_DATA_DIR`, must be on every machine
  that trains).
* **One writer.** Tasks return rows; the driver writes each to the store as it finishes
  (`ray.wait`), so the database, its keys, resuming and `--show` behave exactly as in-process.
  Policies are claimed in the store before they are submitted, as by `ats.search.run_search`.
* **Faults.** A worker that dies is retried (`max_retries`); a unit that still fails (an exception,
  or a worker that died every time) is recorded in the store (`Store.put_failure`) with its error,
  and the run goes on; the next run retries it. A driver killed with `kill -9` loses only the units
  in flight, and the next run resumes from the store. Ctrl-C cancels the outstanding tasks.
* **Same numbers.** A task gets the seeds an in-process run uses (the search seed, the cell's key
  seed), never one of its worker's, so the rows agree with in-process ones within float tolerance.

Ray is an extra (`pip install 'ats[ray]'`), imported only when a run asks for it.
"""
from __future__ import annotations

import copy
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ats.store import Store

ADDRESS = re.compile(r"(auto|local|ray://[\w.\-]+:\d{1,5}|[\w.\-]+:\d{1,5})")


@dataclass(frozen=True)
class RayOptions:
    """Where and how the tasks run.

    `address`: "auto" joins the Ray cluster this machine runs (`ray start --head`, or `RAY_ADDRESS`)
    and otherwise starts one on this machine; "local" always starts one here; "ray://host:10001" or
    "host:6379" joins that cluster. `num_cpus` limits a cluster started here (tests: 2).
    `chunk`: policies per search task (1: one task a policy, the finest progress and fault unit).
    """

    address: str = "auto"
    gpus_per_task: float = 0.0
    cpus_per_task: float = 1.0
    max_retries: int = 2
    chunk: int = 1
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not ADDRESS.fullmatch(self.address):
            raise ValueError(f"--ray {self.address!r}: give auto, local, ray://HOST:PORT or HOST:PORT")
        if not 0 <= self.gpus_per_task <= 64:
            raise ValueError(f"--gpus-per-task {self.gpus_per_task} must lie in 0–64 (fractions share a GPU)")
        if not 0 < self.cpus_per_task <= 1024:
            raise ValueError(f"--cpus-per-task {self.cpus_per_task} must be above 0")
        if not 0 <= self.max_retries <= 100 or not 1 <= self.chunk <= 10_000:
            raise ValueError(f"max_retries {self.max_retries} (0–100) or chunk {self.chunk} (1–10,000) out of range")

    @property
    def threads(self) -> int:
        """torch threads a task runs on: its CPUs, at least one."""
        return max(1, int(self.cpus_per_task))

    def remote(self, function: Callable, **extra):
        """`function` as a Ray task with these resources (Ray started or joined first)."""
        ray = connect(self)
        return ray.remote(function).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                            max_retries=self.max_retries, retry_exceptions=False, **extra)


def ray_module():
    """`ray`, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ValueError("--ray needs Ray, which is not installed: pip install 'ats[ray]'") from error
    return ray


def connect(options: RayOptions):
    """Join or start the Ray cluster of `options` once per process; returns the `ray` module."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if options.address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
            return ray
        except (ConnectionError, RuntimeError, ValueError):
            pass  # no cluster runs here: start one
    if options.address in ("auto", "local"):
        ray.init(num_cpus=options.num_cpus, **quiet)
    else:
        ray.init(address=options.address, log_to_driver=False)
    return ray


def shutdown() -> None:
    """Leave (and, if this process started it, stop) the Ray cluster."""
    ray = ray_module()
    if ray.is_initialized():
        ray.shutdown()


# --- what workers keep --------------------------------------------------------------------------

_KEPT: dict[tuple, Any] = {}  # per worker process: shared inputs and models, read once


def _device(gpus: float) -> torch.device:
    """The task's device: its GPU when it asked for one (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def _shared(boxed: list, device: torch.device):
    """The object behind `boxed[0]` (a reference inside a list, which Ray passes unresolved), read
    and moved to `device` once per worker process."""
    ray = ray_module()
    key = (boxed[0].hex(), str(device))
    if key not in _KEPT:
        if len(_KEPT) > 8:
            _KEPT.clear()
        _KEPT[key] = _to(ray.get(boxed[0]), device)
    return _KEPT[key]


def _to(value, device: torch.device):
    if isinstance(value, (torch.nn.Module, torch.Tensor)):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _portable(value):
    """A copy whose models and tensors live on the CPU, so any worker can read it."""
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).cpu()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_portable(v) for v in value)
    return value


def _error(error: BaseException) -> str:
    """One line: the exception's type and message (a Ray error's cause, not its traceback)."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}".strip().splitlines()
    return text[0][:500] if text else type(cause).__name__


@dataclass(frozen=True)
class Failed:
    """A unit of work that raised: its key and the error, as a task returns it."""

    key: tuple
    error: str


def _drain(ray, pending: dict, handle: Callable[[Any, Any], None], on_lost: Callable[[Any, str], None]) -> None:
    """Hand each finished task's result to `handle` as it arrives (`ray.wait`), or, for a task Ray
    gave up on, its label and error to `on_lost`. Ctrl-C (or any error here) cancels the rest."""
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                label = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a lost worker or a raising task
                    on_lost(label, _error(error))
                    continue
                handle(label, result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


# --- search -------------------------------------------------------------------------------------

def _score_task(policies: list, boxed: list, scorer, definition: str, checkpoint_hash: str, seed: int,
                threads: int, gpus: float) -> list:
    """Score each policy (a ScoreRow, or `Failed` with its error), on this task's device and threads."""
    from ats.search import _score

    torch.set_num_threads(threads)
    common = _shared(boxed, _device(gpus))
    out = []
    for policy in policies:
        try:
            out.append(_score(policy, scorer, definition=definition, checkpoint_hash=checkpoint_hash, seed=seed,
                              **common))
        except Exception as error:  # noqa: BLE001 - recorded, the run goes on
            out.append(Failed((str(policy), definition, checkpoint_hash, seed), _error(error)))
    return out


def score_on_ray(names: Sequence[str], objects: dict, store: Store, scorer, options: RayOptions, *,
                 definition: str, checkpoint_hash: str, seed: int, report: Callable[[str, Any], None],
                 **common) -> tuple[list, list[str]]:
    """Score the policies `names` on Ray, writing each row to `store` as it comes back.

    Policies another writer holds are not submitted: they are returned (second value) for the
    caller to wait for. `report(policy, row)` is called per policy (row None when it failed).
    Returns the stored rows and the policies left to the caller."""
    claimed = [n for n in names if store.claim(n, definition, checkpoint_hash, seed)]
    mine = set(claimed)
    held = [n for n in names if n not in mine]
    rows: list = []
    if not claimed:
        return rows, held
    task = options.remote(_score_task)
    ray = connect(options)
    boxed = [ray.put(_portable(common))]
    pending = {}
    for start in range(0, len(claimed), options.chunk):
        chunk = claimed[start:start + options.chunk]
        ref = task.remote([objects[n] for n in chunk], boxed, scorer, definition, checkpoint_hash, seed,
                          options.threads, options.gpus_per_task)
        pending[ref] = chunk

    def handle(chunk, results) -> None:
        for name, result in zip(chunk, results):
            if isinstance(result, Failed):
                store.put_failure("score", result.key, result.error)
                report(name, None)
            else:
                store.put_score(result)
                rows.append(result)
                report(name, result)

    def lost(chunk, error: str) -> None:
        for name in chunk:
            store.put_failure("score", (name, definition, checkpoint_hash, seed), error)
            report(name, None)

    _drain(ray, pending, handle, lost)
    return rows, held


# --- benchmark ----------------------------------------------------------------------------------

def _victim_task(victim, config, data_root, seed: int, workdir: str, threads: int, gpus: float):
    """Find or make `victim`'s checkpoint (`ats.victims.model_for`, in `workdir` as seen by this
    worker); returns its metadata (path, hash, accuracy) and, separately, its bytes."""
    from ats import data as data_module
    from ats.victims import model_for

    torch.set_num_threads(threads)
    test = data_module.load_dataset("cifar100", "test", root=data_root)
    train = data_module.load_dataset("cifar100", "train", root=data_root) if victim.stage > 0 else None
    path, meta = model_for(victim, config, workdir=Path(workdir), train_data=train, test_data=test, seed=seed,
                           device=_device(gpus))
    return _victim_meta(path, meta), path.read_bytes()


def _victim_meta(path: Path, meta) -> dict:
    """What a cell needs to know of its victim's checkpoint: its file name, hash and test accuracy."""
    from ats import checkpoints

    return {"name": path.name, "digest": checkpoints.checkpoint_hash(path), "accuracy": meta.accuracy}


def _cell_task(cell, victim: dict, payload: bytes, config, boxed: list, indices, privacy, seed: int,
               grid_images: int, threads: int, gpus: float):
    """Attack one cell on its victim (whose checkpoint is `payload`); returns its row and its
    grid's bytes (the driver saves them), or `Failed`."""
    from ats import benchmark, checkpoints
    from ats.cells import cell_attack, cell_key

    torch.set_num_threads(threads)
    device = _device(gpus)
    key = cell_key(cell, config, digest=victim["digest"], seed=seed, privacy_key=privacy.key if privacy else "")
    try:
        model_key = ("model", victim["digest"], str(device))
        if model_key not in _KEPT:
            _KEPT.pop(next((k for k in _KEPT if k[0] == "model"), None), None)  # one model in memory
            _KEPT[model_key] = checkpoints.load_checkpoint_bytes(payload, device=device)[0].eval()
        x, y = _shared(boxed, device)
        if privacy is not None and cell.study == "correlation":  # its S_pri setup, loaded once a worker
            privacy = _KEPT.setdefault(("privacy", privacy.key, str(device)), privacy)
            privacy.device = device
        with tempfile.TemporaryDirectory() as folder:
            grid = Path(folder) / "grid.pt"
            row = benchmark.run_cell(key, cell_attack(cell, config), _KEPT[model_key], x, y, indices=indices,
                                     accuracy=victim["accuracy"], privacy=privacy, stage=cell.stage,
                                     arch=cell.victim(config).arch, grid=grid, grid_images=grid_images,
                                     **benchmark.cell_extras(cell, config))
            return row, grid.read_bytes() if grid.is_file() else b""
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return Failed(key.astuple(), _error(error))


@dataclass
class CellsOutcome:
    """What `cells_on_ray` did: rows by cell index, cells computed, victims' checkpoints and accuracies."""

    rows: dict[int, Any]
    computed: int
    checkpoints: dict  # Victim -> Path in the run folder
    failed: list[tuple[tuple, str]]


def cells_on_ray(cells: Sequence, config, options: RayOptions, *, store: Store, workdir: Path, seed: int,
                 data_root, x: torch.Tensor, y: torch.Tensor, indices, privacy,
                 emit: Callable[..., None]) -> CellsOutcome:
    """Run the benchmark's `cells` on Ray: each victim's model once (a task, unless its checkpoint is
    already in `workdir`), then every cell the store lacks, after its victim. `emit(stage, message,
    row, skipped)` reports progress; rows are written to `store` as they come."""
    from ats import checkpoints
    from ats.benchmark import grid_path
    from ats.cells import CellKey, cell_key
    from ats.victims import model_path

    ray = connect(options)
    outcome = CellsOutcome({}, 0, {}, [])
    victims = list(dict.fromkeys(cell.victim(config) for cell in cells))
    found: dict = {}  # victim -> metadata, for checkpoints already in the run folder
    for victim in victims:
        path = model_path(victim, config, workdir=workdir, seed=seed)
        if path.is_file():
            _, meta = checkpoints.load_checkpoint(path, expect_arch=victim.arch)
            found[victim] = _victim_meta(path, meta)
            outcome.checkpoints[victim] = path
    privacy_key = privacy.key if privacy else ""
    todo = []
    for index, cell in enumerate(cells):
        victim = cell.victim(config)
        if victim in found:
            key = cell_key(cell, config, digest=found[victim]["digest"], seed=seed, privacy_key=privacy_key)
            stored = store.get_benchmark(key.astuple())
            if stored is not None:
                outcome.rows[index] = stored
                emit("attack", f"{_what(cell)}: already in {store.path}", stored, True)
                continue
        todo.append(index)
    if not todo:
        return outcome
    made: dict = {}  # victim -> (metadata ref, bytes ref)
    pending: dict = {}
    train = options.remote(_victim_task, num_returns=2)
    for victim in dict.fromkeys(cells[i].victim(config) for i in todo):
        if victim in found:
            path = outcome.checkpoints[victim]
            made[victim] = (ray.put(found[victim]), ray.put(path.read_bytes()))
        else:
            made[victim] = train.remote(victim, config, data_root, seed, str(workdir), options.threads,
                                        options.gpus_per_task)
            pending[made[victim][0]] = ("victim", victim)
            emit("train", f"training {victim.policy} ({victim.arch}, {victim.defense}) to {victim.stage} epochs "
                          "on Ray", None, False)
    boxed = [ray.put((x.detach().cpu(), y.detach().cpu()))]
    attack = options.remote(_cell_task)
    grids = min(config.grid_images, config.images)
    for index in todo:
        cell = cells[index]
        meta_ref, bytes_ref = made[cell.victim(config)]
        ref = attack.remote(cell, meta_ref, bytes_ref, config, boxed, list(indices), privacy, seed, grids,
                            options.threads, options.gpus_per_task)
        pending[ref] = ("cell", index)

    def handle(label, result) -> None:
        kind, what = label
        if kind == "victim":
            path = model_path(what, config, workdir=workdir, seed=seed)
            if not path.is_file():  # a worker on another machine made it: keep a copy here
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(ray.get(made[what][1]))
            outcome.checkpoints[what] = path
            emit("train", f"model {path.name} ready (accuracy {result['accuracy']:.2%})"
                 if result["accuracy"] is not None else f"model {path.name} ready", None, False)
            return
        cell = cells[what]
        if isinstance(result, Failed):
            store.put_failure("benchmark", result.key, result.error)
            outcome.failed.append((result.key, result.error))
            emit("attack", f"{_what(cell)}: failed ({result.error}); recorded, the run goes on", None, False)
            return
        row, grid = result
        stored = store.get_benchmark(row.key)
        if stored is not None:  # a model remade with the same hash: the stored cell stands
            outcome.rows[what] = stored
            emit("attack", f"{_what(cell)}: already in {store.path}", stored, True)
            return
        if grid:
            target = grid_path(workdir, CellKey(*row.key))
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, grid)
        store.put_benchmark(row)
        outcome.rows[what] = row
        outcome.computed += 1
        emit("attack", f"{_what(cell)}: PSNR {row.summary['psnr_x_median']:.2f} dB vs x (median; mean colour "
                       f"{row.summary['baseline_mean_colour_median']:.2f} dB)", row, False)

    def lost(label, error: str) -> None:
        kind, what = label
        if kind == "victim":
            key = ("train", what.arch, what.policy, what.stage, what.defense)
            outcome.failed.append((key, error))
            store.put_failure("train", key, error)
            emit("train", f"training {what.policy} at {what.stage} epochs failed ({error}); its cells fail too",
                 None, False)
            return
        cell = cells[what]
        meta_ref = made[cell.victim(config)][0]
        try:
            digest = ray.get(meta_ref)["digest"]
        except Exception:  # noqa: BLE001 - its victim failed, and was recorded
            return
        key = cell_key(cell, config, digest=digest, seed=seed, privacy_key=privacy_key).astuple()
        store.put_failure("benchmark", key, error)
        outcome.failed.append((key, error))
        emit("attack", f"{_what(cell)}: failed ({error}); recorded, the run goes on", None, False)

    _drain(ray, pending, handle, lost)
    return outcome


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.{time.monotonic_ns()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def _what(cell) -> str:
    return f"{cell.study} {cell.policy} / {cell.defense} at {cell.stage} epochs"

"""One search in-process and on Ray, timed in one run: wall time, the ratio, and Ray's cost per task.

In-process: `ats.search.run_search` on torch's threads (`--threads`, default 2). On Ray: the same
policies as tasks of `--cpus-per-task` CPUs (1 thread each) on a local cluster of `--workers` CPUs,
so on a 2-core CPU it compares 2 workers of 1 thread with 1 process of 2 threads. Both write to
their own fresh database; the rows are checked to agree. Ray's cluster start and its workers'
first task (starting a process, importing torch, reading the shared inputs) are timed apart from
the steady state, and its bare cost per task is timed on empty tasks. With CUDA, `--gpu-tasks
1,2,4` also times ResNet20-4 scoring with that many tasks sharing each GPU.

    python bench/scale_speed.py --candidates 16 --preset laptop
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ats import search
from ats.distributed import RayOptions, connect, shutdown
from ats.runtime import PRESETS
from ats.scoring import ScoringSetup
from ats.store import Store


def timed_search(policies, setup: ScoringSetup, folder: Path, name: str, ray: RayOptions | None = None):
    started = time.perf_counter()
    with Store.open(folder / f"{name}.db") as store:
        result = search.run_search(policies, store=store, **setup.inputs(), checkpoint_hash=setup.checkpoint_hash,
                                   ray=ray)
    return time.perf_counter() - started, result


def agree(a, b) -> float:
    """The largest |S_pri| difference between two searches' rows (inf when they hold other policies)."""
    if [r.policy for r in a.rows] != [r.policy for r in b.rows]:
        return float("inf")
    return max((abs(x.privacy - y.privacy) for x, y in zip(a.rows, b.rows)), default=0.0)


def empty(_: int) -> int:
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=16, help="random policies to score (default 16)")
    p.add_argument("--preset", default="laptop", choices=PRESETS, help="score preset (default laptop)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process search (default 2)")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--cpus-per-task", type=float, default=1.0)
    p.add_argument("--empty-tasks", type=int, default=200, help="empty tasks timed for Ray's cost per task")
    p.add_argument("--gpu-tasks", default="1,2,4", help="with CUDA: tasks per GPU to time for ResNet20-4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    policies = search.candidates(args.candidates, seed=args.seed)
    setup = ScoringSetup.load(args.preset, device="cpu", seed=args.seed)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.set_num_threads(args.threads)
        here_s, here = timed_search(policies, setup, folder, "here")
        rows.append({"run": f"in-process, {args.threads} threads", "seconds": here_s,
                     "per_policy_s": here_s / len(policies)})

        started = time.perf_counter()
        ray = connect(RayOptions(address="local", num_cpus=args.workers))
        start_s = time.perf_counter() - started
        options = RayOptions(address="local", cpus_per_task=args.cpus_per_task)
        warm_s, _ = timed_search(policies[: args.workers], setup, folder, "warm", options)  # workers start, read inputs
        ray_s, on_ray = timed_search(policies, setup, folder, "ray", options)
        rows.append({"run": f"Ray, {args.workers} workers × {options.threads} thread", "seconds": ray_s,
                     "per_policy_s": ray_s / len(policies), "ratio": here_s / ray_s,
                     "max_privacy_difference": agree(here, on_ray)})

        task = options.remote(empty)
        ray.get([task.remote(i) for i in range(args.workers)])
        started = time.perf_counter()
        ray.get([task.remote(i) for i in range(args.empty_tasks)])
        per_task_ms = (time.perf_counter() - started) / args.empty_tasks * 1e3

        if torch.cuda.is_available():
            gpu = ScoringSetup.load(args.preset, device="cuda", seed=args.seed, untrained=True, arch="resnet20-4")
            for k in (int(t) for t in args.gpu_tasks.split(",")):
                options = RayOptions(address="local", gpus_per_task=1.0 / k)
                seconds, _ = timed_search(policies, gpu, folder, f"gpu{k}", options)
                rows.append({"run": f"Ray, ResNet20-4 on CUDA, {k} tasks a GPU", "seconds": seconds,
                             "per_policy_s": seconds / len(policies)})
        shutdown()

    summary = {"preset": args.preset, "policies": len(policies), "cpu_threads": torch.get_num_threads(),
               "ray_start_s": start_s, "ray_first_tasks_s": warm_s, "ray_per_task_ms": per_task_ms, "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{len(policies)} policies, score preset {args.preset}; Ray cluster start {start_s:.1f} s, its workers' "
          f"first {args.workers} policies {warm_s:.1f} s (process start, torch import, shared inputs), "
          f"{per_task_ms:.2f} ms a task when warm (empty tasks)")
    print(f"{'run':<40} {'seconds':>8} {'s/policy':>9} {'ratio':>6}  S_pri agreement")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        agreement = f"max |Δ| {r['max_privacy_difference']:.1e}" if "max_privacy_difference" in r else ""
        print(f"{r['run']:<40} {r['seconds']:8.1f} {r['per_policy_s']:9.2f} {ratio:>6}  {agreement}")
    print("ratio = in-process time / Ray time (above 1: Ray faster), both warm; Ray's start is extra, once a run")


if __name__ == "__main__":
    main()

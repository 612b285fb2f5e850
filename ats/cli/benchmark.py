"""`ats benchmark`: train per policy, attack under every gradient defense, and tabulate (Gao et al., CVPR 2021, §5)."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ats.cli import add_common, add_ray_flags, check_folder, dumps, log, progress, ray_options
from ats.indices import ATTACK_SET


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="attack policies and gradient defenses and tabulate privacy vs accuracy",
                       description="For each policy (a model trained with it) and each gradient defense (applied to "
                                   "the shared gradient), attack the attack set and report PSNR against T(x) and x, "
                                   "SSIM and test accuracy; also the policy-aware attacker and whether S_pri predicts "
                                   "attack PSNR. Every finished cell is stored at once: rerun the same command to "
                                   "resume.")
    p.add_argument("--preset", default="laptop", choices=["smoke", "laptop", "paper"],
                   help="scale of the protocol (default laptop, about 51 min on a 2-core CPU)")
    p.add_argument("--policies", help="comma-separated policies (default: none and the paper's 3-1-7, 43-18-18, "
                                      "3-1-7+43-18-18)")
    p.add_argument("--defenses", help="comma-separated gradient defenses, e.g. none,prune-70,gauss-1e-3,lap-1e-2, "
                                      "or DP-SGD dp-C-σ (dp-1-1.1; its rows give ε), applied to every policy "
                                      "(default: the preset's; at laptop, the defenses attack only the undefended "
                                      "policy, as the paper's Table 3; with --train-defense a dp model is trained "
                                      "with DP-SGD, which needs an architecture without BatchNorm: lenet)")
    p.add_argument("--threats", help="comma-separated threat models beyond one image's FedSGD gradient, attacked "
                                     "undefended on the none policy: batch-B (one gradient of B images, labels "
                                     "kept), fedavg-E-K (a FedAvg update: E local epochs over K one-image "
                                     "batches); --images must split into their clients (default: the preset's, "
                                     "none at laptop and paper)")
    p.add_argument("--random", type=int, help="extra random policies in the table (default: the preset's)")
    p.add_argument("--from-search", type=Path, metavar="DB",
                   help="also benchmark the policies an `ats search` database selects (top 2 and their hybrid)")
    p.add_argument("--images", type=int, help="attack-set images per cell (default: the preset's)")
    p.add_argument("--iterations", type=int, help="attack iterations (default: the preset's)")
    p.add_argument("--attack", help="attack preset for the table (default: the preset's: iDLG at laptop, IG at "
                                    "paper and smoke)")
    p.add_argument("--no-aware", action="store_true", help="skip the policy-aware attacker")
    p.add_argument("--train-defense", action=argparse.BooleanOptionalAction, default=None,
                   help="train each defense's model with that defense on every training step, as the paper's "
                        "Table 3 (default: on at laptop, off at smoke and paper)")
    p.add_argument("--stages", help="comma-separated training stages in epochs to also attack undefended "
                                    "(default: the preset's, e.g. 0,1 at laptop)")
    p.add_argument("--correlation", type=int, help="random policies for the S_pri–PSNR study (0 skips it)")
    p.add_argument("--correlation-iterations", type=int,
                   help="attack iterations of the correlation study (default: the preset's, 40 at laptop; "
                        "0: the table attack's)")
    p.add_argument("--score-checkpoint", type=Path, help="tiny-data model for S_pri (default: the shipped one)")
    p.add_argument("--db", type=Path, default=Path("results.db"),
                   help="results database (default results.db in the current folder)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"),
                   help="folder for the trained models, benchmark.csv and the scatter plot "
                   "(default runs/benchmark, relative to the current folder)")
    p.add_argument("--report", type=Path, help="also write a Markdown reproduction report here, its figures in "
                                               "figures/ beside it and its table as the same name with .csv")
    add_ray_flags(p)
    add_common(p)


def _split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def benchmark_config(args):
    """The preset's BenchmarkConfig with the command's overrides; bad values fail here, before any work."""
    from ats import attacks, selection
    from ats.benchmark import BenchmarkConfig
    from ats.limits import MAX_CANDIDATES, MAX_ITERATIONS, check_range
    from ats.store import Store

    check_folder(args.out)
    if args.report is not None:
        check_folder(args.report.parent, "--report")
    config = BenchmarkConfig.preset(args.preset)
    base = attacks.AttackConfig.preset(args.attack) if args.attack else config.attack
    if args.iterations is not None:
        check_range("--iterations", args.iterations, 1, MAX_ITERATIONS)
    for name in ("random", "correlation"):
        if getattr(args, name) is not None:
            check_range(f"--{name}", getattr(args, name), 0, MAX_CANDIDATES)
    if args.correlation_iterations is not None:
        check_range("--correlation-iterations", args.correlation_iterations, 0, MAX_ITERATIONS)
    attack = replace(base, iterations=args.iterations or config.attack.iterations)
    changes = {"attack": attack}
    policies = _split(args.policies)
    if args.from_search is not None:
        if not args.from_search.is_file():
            raise ValueError(f"--from-search {args.from_search} does not exist")
        with Store.open(args.from_search) as store:
            rows = selection.search_rows(store)
        if not rows:
            raise ValueError(f"--from-search {args.from_search} holds no scores")
        found = selection.policies_for_benchmark(rows)
        base = policies or config.policies
        policies = tuple(dict.fromkeys((*base, *found)))
    if policies is not None:
        changes["policies"] = policies
    if args.defenses is not None:
        changes["defenses"] = _split(args.defenses)
        changes["defense_policies"] = None
    if args.threats is not None:
        changes["threats"] = _split(args.threats)
    for name in ("random", "images", "correlation", "correlation_iterations"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.no_aware:
        changes["aware"] = False
    if args.train_defense is not None:
        changes["train_defense"] = args.train_defense
    if args.stages is not None:
        stages = _split(args.stages)
        if not all(re.fullmatch(r"[0-9]{1,6}", stage) for stage in stages):
            raise ValueError(f"--stages {args.stages!r} must be comma-separated whole epochs, e.g. 0,1")
        changes["stages"] = tuple(int(stage) for stage in stages)
    return replace(config, **changes)


def run(args) -> int:
    from ats import benchmark, report
    from ats.runtime import describe_device, pick_device
    from ats.store import Store

    config = benchmark_config(args)
    ray = ray_options(args)
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    with Store.open(args.db) as store:
        policies = config.table_policies(args.seed)
        log(f"ats benchmark: preset {config.name}, policies {', '.join(policies)}; defenses "
            f"{', '.join(config.defenses)}; {config.attack.name} × {config.attack.iterations} on {config.images} "
            f"images; db {args.db}, models in {args.out / 'models'}; {describe_device(device)}"
            + (f"; on Ray ({args.ray}, {ray.cpus_per_task:g} CPU and {ray.gpus_per_task:g} GPU a task)" if ray else ""))
        bar = progress(1, unit="cell")

        def on_event(event: benchmark.BenchmarkEvent) -> None:
            bar.total = event.total
            bar.n = event.done
            bar.set_description(event.stage)
            bar.set_postfix_str(event.message[-70:], refresh=False)
            bar.refresh()
            if event.row is not None and not event.skipped:
                bar.write(f"  {event.message}", file=sys.stderr)

        result = benchmark.run_benchmark(config, store=store, workdir=args.out, seed=args.seed, device=device,
                                         score_checkpoint=args.score_checkpoint, callback=on_event, ray=ray)
        bar.close()
    for key, error in result.failed:
        log(f"ats benchmark: {' '.join(str(k) for k in key[:4])} failed ({error}); rerun to retry it")
    timing = record_invocation(args.out / "invocations.json", result)
    csv_path = report.write_csv(result, args.out / "benchmark.csv")
    folder = args.report.parent / "figures" if args.report else args.out
    scatter = report.save_scatter(result, folder / (f"{args.report.stem}-correlation.png" if args.report
                                                    else "correlation.png"))
    if args.report:
        command = "ats " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("ats") else \
            f"ats benchmark --preset {config.name} --report {args.report}"
        from ats import data

        test = data.load_dataset("cifar100", "test")
        images, _ = test.batch(ATTACK_SET[: config.grid_images], "cpu")
        report.write_report(result, args.report, command=command, device=describe_device(device), scatter=scatter,
                            workdir=args.out, images=images, timing=timing)
        report.write_csv(result, args.report.with_suffix(".csv"))  # the report's machine-readable twin
    document = {"preset": config.name, "db": str(args.db), "csv": str(csv_path), "report": str(args.report or ""),
                "cells": len(result.rows), "computed": result.computed, "seconds": round(result.seconds, 1),
                "failed": [{"key": list(key), "error": error} for key, error in result.failed],
                "correlation": result.correlation, "checkpoints": result.checkpoints, "rows": result.table()}
    if args.json:
        print(dumps(document))
    else:
        print(report.markdown_table(result))
        if config.aware:
            print()
            print(report.markdown_aware(result))
        if result.correlation:
            print()
            print(report.markdown_correlation(result))
        print(f"\n{result.computed} of {len(result.rows)} cells computed in {result.seconds:.0f} s; table in {csv_path}"
              + (f", report in {args.report}" if args.report else ""))
    return 0


def record_invocation(path: Path, result) -> dict:
    """Append this invocation's wall time and peak memory to `path` (JSON); the totals over all of them."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        runs = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        runs = []  # a damaged log costs the totals, never the run
    runs.append({"seconds": round(result.seconds, 1), "computed": result.computed, "peak_mib": round(peak, 1)})
    path.write_text(json.dumps(runs, indent=1))
    return {"invocations": len(runs), "seconds": sum(r["seconds"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs)}


"""`ats search`: score many candidate policies into a results database and select the best (Gao et al., CVPR 2021, §4.4)."""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from ats.cli import add_common, add_ray_flags, dumps, log, progress, ray_options
from ats.cli.score import add_scoring_flags, load_scoring, score_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="score candidate policies (resumable) and select the best and their hybrid",
                       description="Score random candidate policies into a results database, one committed row per "
                                   "policy (an interrupted search resumes), then keep those with S_acc ≥ threshold, "
                                   "rank by S_pri, and propose the top policies, their disjoint hybrid and the "
                                   "privacy/accuracy Pareto front.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--candidates", type=int, default=1500, help="random policies of 1–3 ops (default 1500)")
    which.add_argument("--singles", action="store_true", help="score the 50 one-op policies instead")
    which.add_argument("--policies", help="score these policies instead, e.g. 3-1-7,43-18-18")
    p.add_argument("--db", type=Path, default=Path("results.db"),
                   help="results database (default results.db in the current folder)")
    p.add_argument("--top", type=int, default=2, help="how many policies to select (default 2)")
    p.add_argument("--threshold", type=float, help="accuracy threshold on S_acc (default -85)")
    p.add_argument("--alpha", type=float,
                   help="rank by alpha·mean + (1-alpha)·variance of per-image S_pri (HEAD code: 0.7; default: mean)")
    p.add_argument("--racing", action="store_true",
                   help="score all candidates on a few images first and finish only those that can reach the top")
    p.add_argument("--show", action="store_true", help="list the database's best without computing anything")
    add_scoring_flags(p)
    add_ray_flags(p)
    add_common(p)


def _policies(args) -> list:
    from ats import search

    if args.policies is not None:  # an empty --policies "" is refused, never the default search
        return list(search.parse_policies(args.policies))
    if args.singles:
        return list(search.single_ops())
    return list(search.candidates(args.candidates, seed=args.seed))


def _show(args, config, threshold: float) -> dict:
    """The best of what `--db` holds for this definition and seed (the checkpoint's, when it exists)."""
    from ats import checkpoints
    from ats.scoring import score_checkpoint
    from ats.selection import select
    from ats.store import Store

    if not args.db.is_file():
        raise ValueError(f"results database {args.db} does not exist; run `ats search --db {args.db}` first")
    wanted = None
    try:  # the checkpoint, when it is there, says the architecture and which rows are its own
        path = score_checkpoint(args.checkpoint)
        _, meta = checkpoints.load_checkpoint(path, expect_arch=args.model)
        config, wanted = replace(config, arch=meta.arch), checkpoints.checkpoint_hash(path)
    except ValueError:
        config = replace(config, arch=args.model or config.arch)
    definition = config.definition()
    with Store.open(args.db, definition=definition) as store:
        groups = [g for g in store.groups() if g.definition == definition and g.seed == args.seed]
        if not groups:
            raise ValueError(f"results database {args.db} holds no rows for seed {args.seed}; "
                             f"seeds there: {sorted({g.seed for g in store.groups()})}")
        group = next((g for g in groups if g.checkpoint == wanted), groups[0])
        rows = store.get_scores(definition, group.checkpoint, args.seed)
    selection = select(rows, threshold=threshold, top=args.top, alpha=args.alpha)
    return {"db": str(args.db), "preset": config.name, "checkpoint": group.checkpoint, "seed": args.seed,
            "rows": len(rows), "selection": selection.to_dict()}


def _search(args, threshold: float) -> dict:
    """Score `args`' policies into --db (resuming), with a progress bar, and select from them."""
    from ats import search
    from ats.racing import Racing
    from ats.runtime import describe_device, pick_device
    from ats.selection import select
    from ats.store import Store

    policies = _policies(args)
    ray = ray_options(args)
    device = pick_device(args.device)
    setup = load_scoring(args, device)
    with Store.open(args.db, definition=setup.config.definition()) as store:
        log(f"ats search: {len(policies)} policies, preset {setup.config.name}, "
            f"{setup.config.privacy_images} privacy images, model {setup.checkpoint}, db {args.db}, "
            f"{describe_device(device)}{', racing' if args.racing else ''}"
            + (f", on Ray ({args.ray}, {ray.cpus_per_task:g} CPU and {ray.gpus_per_task:g} GPU a task)" if ray else ""))
        bar = progress(len(policies), unit="policy")
        stage = {"name": None}

        def report(event: search.SearchProgress) -> None:
            if event.stage != stage["name"]:
                stage["name"] = event.stage
                bar.reset(total=event.total)
                bar.set_description(event.stage)
                if event.skipped:
                    log(f"ats search: {event.skipped} policies already in {args.db}, resuming")
            bar.n = event.done
            bar.set_postfix(policy=event.policy, refresh=False)
            bar.refresh()

        race = Racing(keep=max(10, args.top), threshold=threshold) if args.racing else False
        result = search.run_search(policies, store=store, **setup.inputs(), checkpoint_hash=setup.checkpoint_hash,
                                   callback=report, racing=race, ray=ray)
        bar.close()
        failures = [{"policy": key[0], "error": error} for _, key, error in store.failures("score")
                    if key[1:] == (setup.config.definition(), setup.checkpoint_hash, args.seed)]
    for failure in failures:
        log(f"ats search: {failure['policy']} failed ({failure['error']}); rerun to retry it")
    selection = select(result.rows, threshold=threshold, top=args.top, alpha=args.alpha)
    return {"db": str(args.db), "preset": setup.config.name, "checkpoint": setup.checkpoint_hash,
            "seed": args.seed, "rows": len(result.rows), "requested": len(policies),
            "scored": result.scored, "skipped": result.skipped, "by_others": result.by_others,
            "dropped": result.dropped, "failed": failures, "image_scores": result.image_scores,
            "seconds": round(result.seconds, 3),
            "selection": selection.to_dict()}


def run(args) -> int:
    from ats import scores
    from ats.limits import MAX_CANDIDATES, check_range

    threshold = scores.ACCURACY_THRESHOLD if args.threshold is None else args.threshold
    if args.candidates > MAX_CANDIDATES:  # below 1, `search.candidates` says what n may be
        check_range("--candidates", args.candidates, 1, MAX_CANDIDATES)
    check_range("--top", args.top, 1, MAX_CANDIDATES)
    if not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha} must lie in [0, 1]")
    config = score_config(args)
    document = _show(args, config, threshold) if args.show else _search(args, threshold)
    if args.json:
        print(dumps(document))
    else:
        _print_summary(document)
    return 0


def _print_summary(document: dict) -> None:
    s = document["selection"]
    print(f"{document['rows']} scored policies in {document['db']} (preset {document['preset']}); "
          f"{s['passed']} pass S_acc ≥ {s['threshold']:g}, {s['rejected']} rejected")
    if s["note"]:
        print(s["note"])
    print(f"{'rank':>4} {'policy':<12} {'S_pri':>7} {'S_acc':>8}")
    for rank, r in enumerate(s["best"], start=1):
        print(f"{rank:>4} {r['policy']:<12} {r['privacy']:7.4f} {r['accuracy']:8.2f}")
    print(f"top {len(s['top'])}: {', '.join(r['policy'] for r in s['top']) or '-'}; hybrid: {s['hybrid'] or '-'}")
    print("Pareto front (S_pri ↓, S_acc ↑): " + ", ".join(f"{r['policy']} ({r['privacy']:.3f}, {r['accuracy']:.1f})"
                                                        for r in s["pareto"]))

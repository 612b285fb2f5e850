"""Beyond one gradient, measured: the same 8 test images under every threat model and defense (issue 14).

One model (the laptop benchmark's LeNet, trained 5 epochs without a policy; trained here if its
checkpoint is missing), the attack set's first `--images` CIFAR-100 test images, and one attack
for every row (L-BFGS on the cosine distance, lr 1, `--iterations`, the best of `--restarts` by
the gradient-matching cost: on this LeNet only L-BFGS reconstructs, the L2 cost of iDLG diverges on
joint batches, and one restart often stalls), so the rows differ only in what the client shares:

* FedSGD: each image's own gradient (the paper's threat);
* FedAvg-E-K: the weight difference after E local epochs over K one-image batches (`--fedavg`);
* batch-B: one gradient of B images, labels kept and counted from the last layer (`--batches`);
* DP-SGD at three budgets ε of the one update (`--epsilons`; σ from Opacus's RDP accountant, clip 1);
* ATS's policies applied by the client (`--policies`), FedSGD.

Every row is paired with FedSGD on the same images (Wilcoxon, Holm) and set beside the mean-colour
baseline, with the seconds it took. Rows are written to `--out`/threat_study.json as they finish,
and a rerun skips the rows already there.

    python bench/threat_study.py                # about 25 min on one core
    python bench/threat_study.py --images 2 --iterations 5 --out /tmp/quick   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ats import data
from ats.attacks import AttackConfig
from ats.cells import Victim
from ats.indices import ATTACK_SET
from ats.privacy import noise_for_epsilon
from ats.protocol import BenchmarkConfig
from ats.threats import Scenario, attack_threat, study_rows
from ats.victims import VictimModels


def scenarios(args) -> list[Scenario]:
    out = [Scenario()]
    out += [Scenario(f"fedavg-{s}") for s in args.fedavg.split(",") if s]
    out += [Scenario(f"batch-{b}") for b in args.batches.split(",") if b]
    for epsilon in (float(e) for e in args.epsilons.split(",") if e):
        sigma = noise_for_epsilon(epsilon)  # one update, sampling rate 1
        out.append(Scenario(defense=f"dp-1-{float(f'{sigma:.3g}'):g}"))
    out += [Scenario(policy=p) for p in args.policies.split(",") if p]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=4, help="restarts per image (the best by gradient-matching cost is kept)")
    parser.add_argument("--fedavg", default="1-2,2-2", help="E-K settings (default 1-2,2-2)")
    parser.add_argument("--batches", default="4,8", help="batch sizes (default 4,8)")
    parser.add_argument("--epsilons", default="1,10,100", help="DP budgets of one update (default 1,10,100)")
    parser.add_argument("--policies", default="3-1-7,43-18-18,3-1-7+43-18-18")
    parser.add_argument("--workdir", type=Path, default=Path("runs/laptop"), help="where the benchmark's models are")
    parser.add_argument("--out", type=Path, default=Path("runs/threat-study"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="LPIPS left empty")

    config = BenchmarkConfig.laptop()
    test = data.load_dataset("cifar100", "test")
    victims = VictimModels(config, workdir=args.workdir, test_data=test, data_root=None, seed=0, device=torch.device("cpu"),
                           on_train=print)
    model, _ = victims.get(Victim("lenet", "none", config.stage))
    model.eval()
    indices = list(ATTACK_SET[: args.images])
    x, y = test.batch(indices)
    attack = replace(AttackConfig.lbfgs_cos(), lr=1.0, restarts=args.restarts, iterations=args.iterations)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "threat_study.json"
    done = json.loads(saved.read_text()) if saved.is_file() else {}
    study = []
    for scenario in scenarios(args):
        name = str(scenario)
        if name in done:
            print(f"{name}: already in {saved}")
            study.append((scenario, _Stored(done[name])))
            continue
        outcome = attack_threat(model, x, y, scenario.threat, attack, policy=scenario.policy,
                                defense=scenario.defense, seed=0, indices=indices)
        done[name] = {"results": [r.to_dict() for r in outcome.results], "clients": outcome.clients,
                      "seconds": outcome.seconds}
        saved.write_text(json.dumps(done, indent=1))
        print(f"{name}: {outcome.seconds:.0f} s", flush=True)
        study.append((scenario, outcome))
    rows = study_rows(study)
    print(f"\n{args.images} images, LeNet {config.stage} epochs (accuracy "
          f"{100 * victims.accuracies[Victim('lenet', 'none', config.stage)]:.1f} %), {attack.name} × "
          f"{args.iterations}, {torch.get_num_threads()} threads\n")
    print("| threat | policy | defense | ε (one update) | clients | PSNR vs x, median [95 % CI] | aligned "
          "| mean colour | leaks? | recovered | Δ vs FedSGD [95 % CI] | p (Holm) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "–" if r["epsilon_update"] is None else f"{r['epsilon_update']:.3g}"
        p = "–" if math.isnan(r["p_adjusted"]) else f"{r['p_adjusted']:.3f}"
        print(f"| {r['threat']} | {r['policy']} | {r['defense']} | {eps} | {r['clients']} "
              f"| {r['psnr_x_median']:.1f} [{r['psnr_x_ci_low']:.1f}, {r['psnr_x_ci_high']:.1f}] "
              f"| {r['psnr_x_aligned_median']:.1f} | {r['baseline_mean_colour_median']:.1f} "
              f"| {'yes' if r['leaks'] else 'no'} ({r['leak_margin']:+.1f}) | {r['recovered']} / {r['finished']} "
              f"| {r['diff_median']:+.1f} [{r['diff_ci_low']:+.1f}, {r['diff_ci_high']:+.1f}] | {p} "
              f"| {r['seconds']:.0f} |")
    (args.out / "threat_study_rows.json").write_text(json.dumps(rows, indent=1, default=float))


class _Stored:
    """A finished scenario read back from the JSON: what `study_rows` reads of a `ThreatAttack`."""

    def __init__(self, stored: dict) -> None:
        from ats.evaluation import ImageResult

        self.results = [ImageResult(**r) for r in stored["results"]]
        self.clients, self.seconds = stored["clients"], stored["seconds"]


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\nwall time {time.perf_counter() - started:.0f} s")

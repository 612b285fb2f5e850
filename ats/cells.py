"""The benchmark's cells: what is attacked (study, policy, defense, training stage) and where its row
is stored.

The protocol (Gao et al., CVPR 2021, §5: Tables 1 and 3; docs/design.md §2) is planned as a tuple
of `Cell`s:

* table: each policy × gradient defense (or only the `defense_policies` under the defenses), on
  the policy's model at the main training stage;
* stages: the undefended attack on each policy's model at the other training stages (gradients
  leak most early in training, and a federated attacker sees every round);
* aware: the policy-aware attacker on each policy (but "none");
* threat: each of `threats` (`ats.threats`: a batch's one gradient, a FedAvg client's weight
  difference) on the `threat_policies`, undefended, at the main stage;
* regime: other (model, attack) settings attacked undefended, such as the paper's IG on ResNet20,
  so the report can say whether they leak at this scale;
* correlation: random policies applied by the client on the "none" model, for S_pri against PSNR.

A `CellKey` is a cell's key in the results store, so a rerun finds finished cells and never
computes or stores one twice. The training stage is part of the victim's checkpoint (and so of
its hash), which is how a key tells stages apart.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

from ats import attacks
from ats.policy import parse_policy
from ats.threats import parse_threat

if TYPE_CHECKING:
    from ats.protocol import BenchmarkConfig

STUDIES = ("table", "stages", "aware", "threat", "regime", "correlation")


class Victim(NamedTuple):
    """The model a cell attacks: its architecture, the policy it was trained with, its training
    stage in epochs (0: the seeded initialisation) and the gradient defense of its training."""

    arch: str
    policy: str
    stage: int
    defense: str = "none"


@dataclass(frozen=True)
class Cell:
    """One cell of the protocol: a study (`STUDIES`), a policy, a gradient defense, a training stage."""

    study: str
    policy: str
    defense: str
    stage: int
    arch: str = ""  # the victim's architecture ("": the recipe's)
    attack: str = ""  # a regime's attack preset ("": the study's)
    iterations: int = 0  # a regime's attack iterations (0: the config's)
    threat: str = "fedsgd"  # what the client shares (`ats.threats`); other than fedsgd only in the threat study

    def victim(self, config: BenchmarkConfig) -> Victim:
        """The correlation study attacks the "none" model; with `train_defense`, a defended table
        cell attacks the model trained under that defense."""
        policy = "none" if self.study == "correlation" else self.policy
        trained = self.defense if (config.train_defense and self.study == "table") else "none"
        return Victim(self.arch or config.recipe.arch, policy, self.stage, trained)


@dataclass(frozen=True)
class CellKey:
    """Where a cell's row is stored: the columns of `BenchmarkRow.key`, in that order."""

    study: str
    policy: str
    defense: str
    attack: str
    checkpoint: str  # the victim's hash; a correlation cell's adds "|S_pri <S_pri model hash>:<definition>"
    images: int
    iterations: int
    seed: int

    def astuple(self) -> tuple:
        return astuple(self)


def plan_cells(config: BenchmarkConfig, seed: int) -> tuple[Cell, ...]:
    """The protocol's cells in order: table, stages, aware, threat, regime, correlation."""
    policies, main = config.table_policies(seed), config.stage
    defended = ({str(parse_policy(p)) for p in config.defense_policies} if config.defense_policies is not None
                else set(policies))
    cells = [Cell("table", p, d, main) for p in policies for d in config.defenses
             if d == "none" or p in defended]
    staged = config.stage_policies if config.stage_policies is not None else policies
    cells += [Cell("stages", p, "none", s) for p in staged for s in config.stages if s != main]
    if config.aware:
        chosen = config.aware_policies if config.aware_policies is not None else policies
        cells += [Cell("aware", p, "none", main) for p in chosen if p != "none"]
    cells += [Cell("threat", str(parse_policy(p)), "none", main, threat=str(parse_threat(t)))
              for p in config.threat_policies for t in config.threats]
    cells += [Cell("regime", "none", "none", stage, arch, attack, iterations)
              for arch, attack, iterations, stage in config.regimes]
    cells += [Cell("correlation", p, "none", main) for p in config.correlation_policies(seed)]
    return tuple(cells)


def aware_attack(base: attacks.AttackConfig, restarts: int = 8, screen: int = 0) -> attacks.AttackConfig:
    """`base` made policy-aware, trying every flip × x-sign × y-sign hypothesis (8 restarts); with
    `screen`, each for that many iterations, then only each image's cheapest to the end."""
    if base.aware:
        return base
    name = "aware" if base.name == "ig" else f"aware-{base.name}"
    return replace(base, name=name, aware=True, restarts=restarts, screen=screen)


def cell_attack(cell: Cell, config: BenchmarkConfig) -> attacks.AttackConfig:
    """The attack of a cell: the table's, its policy-aware version, or a regime's own."""
    if cell.study == "regime":
        attack = attacks.AttackConfig.preset(cell.attack)
        return replace(attack, iterations=cell.iterations or attack.iterations)
    if cell.study == "aware":
        return aware_attack(config.attack, config.aware_restarts, config.aware_screen)
    if cell.study == "correlation":
        return replace(config.attack, iterations=config.correlation_budget)
    return config.attack


def attack_label(attack: attacks.AttackConfig, threat: str = "fedsgd") -> str:
    """The attack's name in a store key: restarts (and their screening) are part of what was run,
    and so is a threat other than fedsgd ("idlg@batch-4")."""
    label = attack.name
    if attack.restarts != 1:
        screened = f"-s{attack.screen}" if attack.screened else ""
        label = f"{attack.name}-r{attack.restarts}{screened}"
    return label if threat == "fedsgd" else f"{label}@{threat}"


def cell_key(cell: Cell, config: BenchmarkConfig, *, digest: str, seed: int, privacy_key: str = "") -> CellKey:
    """The cell's store key on the victim of hash `digest` (`privacy_key`: `PrivacyScorer.key`)."""
    attack = cell_attack(cell, config)
    checkpoint = f"{digest}|S_pri {privacy_key}" if cell.study == "correlation" else digest
    return CellKey(cell.study, cell.policy, cell.defense, attack_label(attack, cell.threat), checkpoint, config.images,
                   attack.iterations, seed)

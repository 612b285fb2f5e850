"""The benchmark's cells: what is attacked (study, policy, defense) and where its row is stored.

The protocol (Gao et al., CVPR 2021, §5: Tables 1 and 3; docs/design.md §2) is planned as a
tuple of `Cell`s: the table (each policy × gradient defense), the policy-aware attacker on each
policy, and the S_pri-PSNR correlation over random policies. A `CellKey` is a cell's key in the
results store, so a rerun finds finished cells and never computes or stores one twice.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING

from ats import attacks

if TYPE_CHECKING:
    from ats.benchmark import BenchmarkConfig

STUDIES = ("table", "aware", "correlation")


@dataclass(frozen=True)
class Cell:
    """One cell of the protocol: a study (`STUDIES`), a policy and a gradient defense."""

    study: str
    policy: str
    defense: str

    @property
    def victim(self) -> str:
        """The policy whose model is attacked: the correlation study attacks the "none" model."""
        return "none" if self.study == "correlation" else self.policy


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
    """The protocol's cells in order: the table (policy × defense), the aware attacker, the correlation."""
    policies = config.table_policies(seed)
    cells = [Cell("table", p, d) for p in policies for d in config.defenses]
    if config.aware:
        cells += [Cell("aware", p, "none") for p in policies if p != "none"]
    cells += [Cell("correlation", p, "none") for p in config.correlation_policies(seed)]
    return tuple(cells)


def cell_attack(cell: Cell, config: BenchmarkConfig) -> attacks.AttackConfig:
    """The table's attack, or the policy-aware one for the aware study, at the config's iterations."""
    attack = attacks.AttackConfig.aware_ig() if cell.study == "aware" else config.attack
    return replace(attack, iterations=config.attack.iterations)


def cell_key(cell: Cell, config: BenchmarkConfig, *, digest: str, seed: int, privacy_key: str = "") -> CellKey:
    """The cell's store key on the victim of hash `digest` (`privacy_key`: `PrivacyScorer.key`)."""
    attack = cell_attack(cell, config)
    checkpoint = f"{digest}|S_pri {privacy_key}" if cell.study == "correlation" else digest
    return CellKey(cell.study, cell.policy, cell.defense, attack.name, checkpoint, config.images,
                   attack.iterations, seed)

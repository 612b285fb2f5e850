"""Transformation policies of Automatic Transformation Search: `Policy`, `Hybrid`, the client pipeline.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.4: a policy is a short sequence of entries of the 50-op pool (`ats.pool.POOL`),
written "3-1-7" and applied left to right; a hybrid "3-1-7+43-18-18" draws one of its policies
uniformly for each image. The client transforms each private image by random crop (pad 4),
horizontal flip, then the policy, before computing its gradient (`transform`).

The original drew hybrid choices from NumPy's global RNG inside DataLoader workers and never
checked that a hybrid's policies share no op, as the paper requires; here every draw comes from
a passed `torch.Generator` and `Hybrid.is_disjoint` makes the check.

`parse_policy` reads a policy written on one line: spaces around '-' and '+' are ignored, but
line breaks, tabs and other invisible characters are refused, and so is a hybrid that names
the same policy twice ("3+3": the paper's hybrids combine different policies). Policies have
at most `ats.limits.POLICY_OPS` ops and hybrids `HYBRID_POLICIES` policies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ats.limits import HYBRID_POLICIES, POLICY_OPS, POLICY_TEXT
from ats.ops import apply_op, check_images, check_semantics, random_crop_flip
from ats.pool import POOL, OpSpec, describe, op_spec

_LAST = len(POOL) - 1
_DASHES = {"\u2212": "Unicode minus '−' (U+2212)", "\u2013": "en dash '–' (U+2013)",
           "\u2014": "em dash '—' (U+2014)", "\u2010": "hyphen '‐' (U+2010)", "\u2011": "non-breaking hyphen (U+2011)"}
_SYNTAX = "write pool indices 0–49 joined by '-' (e.g. '3-1-7'), hybrids joined by '+' (e.g. '3-1-7+43-18-18'), or 'none'"


@dataclass(frozen=True)
class Policy:
    """Pool entries applied in order to every image; `Policy.none()` is no policy ("none").

    Whether a random crop and flip come first is not part of the policy: it is the separate
    `crop_flip` flag of `transform`, `ats.federated.client_update` and `ats.recipes.TrainRecipe`.
    """

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(op_spec(i).index for i in self.indices))

    @classmethod
    def none(cls) -> Policy:
        """No policy, written "none": the only spelling of "no transformation" in `ats`."""
        return cls(())

    @classmethod
    def of(cls, indices: Iterable[int]) -> Policy:
        """A policy from any sequence of indices, e.g. `Policy.of([3, 1, 7])`."""
        return cls(tuple(indices))

    @property
    def ops(self) -> tuple[OpSpec, ...]:
        return tuple(POOL[i] for i in self.indices)

    def __str__(self) -> str:
        return "-".join(str(i) for i in self.indices) or "none"

    def describe(self, size: int = 32) -> str:
        """"translateX ±14.5 px → contrast ±0.33 → translateY ±3.2 px" (or "no transformation")."""
        return " → ".join(describe(i, size) for i in self.indices) or "no transformation"

    def apply(self, x: torch.Tensor, generator: torch.Generator, semantics: str = "ats") -> torch.Tensor:
        """Apply the ops in order, each with fresh per-image signs: (B, 3, H, W) -> (B, 3, H, W)."""
        check_semantics(semantics)
        check_images(x, generator)
        for index in self.indices:
            x = apply_op(x, index, generator, semantics)
        return x

    def transform(self, x: torch.Tensor, generator: torch.Generator, *, crop_flip: bool = True,
                  semantics: str = "ats") -> torch.Tensor:
        """The client pipeline with this policy; see `transform`."""
        return transform(x, self, generator, crop_flip=crop_flip, semantics=semantics)


@dataclass(frozen=True)
class Hybrid:
    """Several policies; each image gets one of them, drawn uniformly."""

    policies: tuple[Policy, ...]

    def __post_init__(self) -> None:
        policies = tuple(self.policies)
        if not policies or not all(isinstance(p, Policy) for p in policies):
            raise ValueError(f"a Hybrid needs one or more Policy objects; got {self.policies!r}")
        object.__setattr__(self, "policies", policies)

    @classmethod
    def of(cls, policies: Iterable[Sequence[int]]) -> Hybrid:
        """A hybrid from index lists, e.g. `Hybrid.of([[3, 1, 7], [43, 18, 18]])`."""
        return cls(tuple(Policy.of(p) for p in policies))

    @property
    def ops(self) -> tuple[OpSpec, ...]:
        """The ops of all its policies, in order."""
        return tuple(op for p in self.policies for op in p.ops)

    def __str__(self) -> str:
        return "+".join(str(p) for p in self.policies)

    def describe(self, size: int = 32) -> str:
        """The policies in words, separated by " | " (each image gets one of them)."""
        return " | ".join(p.describe(size) for p in self.policies)

    def is_disjoint(self) -> bool:
        """True when no op (name and magnitude) appears in two of its policies (paper §4.4)."""
        seen: set[tuple[str, float | None]] = set()
        for policy in self.policies:
            keys = {op.key for op in policy.ops}
            if keys & seen:
                return False
            seen |= keys
        return True

    def apply(self, x: torch.Tensor, generator: torch.Generator, semantics: str = "ats") -> torch.Tensor:
        """Draw a policy per image, apply each policy to its sub-batch: (B, 3, H, W) -> (B, 3, H, W)."""
        check_semantics(semantics)
        check_images(x, generator)
        choice = torch.randint(0, len(self.policies), (x.shape[0],), generator=generator, device=generator.device)
        out = x.clone()
        for k, policy in enumerate(self.policies):
            members = (choice == k).nonzero().squeeze(1)  # (B_k,)
            if members.numel():
                out[members] = policy.apply(x[members], generator, semantics)
        return out

    def transform(self, x: torch.Tensor, generator: torch.Generator, *, crop_flip: bool = True,
                  semantics: str = "ats") -> torch.Tensor:
        """The client pipeline with this hybrid; see `transform`."""
        return transform(x, self, generator, crop_flip=crop_flip, semantics=semantics)


def _quote(text: str) -> str:
    """`text` quoted for a message, cut short when long."""
    return repr(text) if len(text) <= 40 else f"{text[:30]!r}… ({len(text):,} characters)"


def _parse_part(part: str, text: str) -> Policy:
    """One '-'-joined policy of `text`; `part` is already stripped and non-empty."""
    if part.lower() == "none":
        return Policy.none()
    tokens = part.split("-")
    if len(tokens) > POLICY_OPS:
        raise ValueError(f"policy {_quote(text)} has {len(tokens):,} ops in {_quote(part)}; at most "
                         f"{POLICY_OPS} ops a policy (the paper's have 3)")
    indices = []
    for position, token in enumerate(tokens, start=1):
        token = token.strip(" ")
        if not token:
            hint = " (negative indices do not exist)" if part.startswith("-") and position == 1 else ""
            raise ValueError(f"policy {_quote(text)} has an empty index at position {position} of "
                             f"{_quote(part)}{hint}; {_SYNTAX}")
        if not (token.isascii() and token.isdigit()):
            raise ValueError(f"policy {_quote(text)}: {_quote(token)} is not an index; indices are whole "
                             f"numbers 0–{_LAST}")
        if len(token) > 3:  # never convert a 5,000-digit number
            raise ValueError(f"policy index {_quote(token)} is out of range 0–{_LAST}")
        indices.append(op_spec(int(token)).index)
    return Policy(tuple(indices))


def _check_characters(text: str) -> None:
    """ValueError for a look-alike dash or an invisible character (line break, tab, …) in `text`."""
    for char, name in _DASHES.items():
        if char in text:
            raise ValueError(f"policy {_quote(text)} contains a {name}; use the ASCII hyphen '-' instead, "
                             f"as in {_quote(text.replace(char, '-'))}")
    for position, char in enumerate(text, start=1):
        if not char.isprintable():
            name = {"\n": "a line break", "\r": "a line break", "\t": "a tab"}.get(char, f"U+{ord(char):04X}")
            raise ValueError(f"policy {_quote(text)} contains {name} at character {position}; write a "
                             f"policy on one line, with only spaces around '-' and '+'")


def parse_policy(text: str) -> Policy | Hybrid:
    """Parse "3-1-7", "3-1-7+43-18-18" or "none"; `str()` of the result gives the canonical form back."""
    if not isinstance(text, str):
        raise ValueError(f"a policy string is needed, got {type(text).__name__}; {_SYNTAX}")
    if len(text) > POLICY_TEXT:
        raise ValueError(f"policy {_quote(text)} is longer than {POLICY_TEXT:,} characters; at most "
                         f"{HYBRID_POLICIES} policies of {POLICY_OPS} ops")
    _check_characters(text)
    if not text.strip(" "):
        raise ValueError(f"policy string is empty; {_SYNTAX}")
    parts = text.split("+")
    if len(parts) > HYBRID_POLICIES:
        raise ValueError(f"policy {_quote(text)} is a hybrid of {len(parts)} policies; at most {HYBRID_POLICIES} "
                         f"(the paper's have 2)")
    policies: list[Policy] = []
    for number, part in enumerate(parts, start=1):
        if not part.strip(" "):
            raise ValueError(f"policy {_quote(text)} has an empty policy at part {number} of {len(parts)} "
                             f"around '+'; {_SYNTAX}")
        policy = _parse_part(part.strip(" "), text)
        if policy in policies:
            raise ValueError(f"policy {_quote(text)} names {policy} twice; a hybrid combines different "
                             f"policies, so write each once")
        policies.append(policy)
    return policies[0] if len(policies) == 1 else Hybrid(tuple(policies))


def as_policy(policy: Policy | Hybrid | str) -> Policy | Hybrid:
    """`policy` itself, or its string parsed (`parse_policy`); anything else is a ValueError."""
    if isinstance(policy, str):
        return parse_policy(policy)
    if not isinstance(policy, (Policy, Hybrid)):
        hint = "; no policy is Policy.none() or 'none'" if policy is None else ""
        raise ValueError(f"policy must be a Policy, Hybrid or policy string, got {type(policy).__name__}{hint}")
    return policy


def random_policy(generator: torch.Generator, max_ops: int = 3) -> Policy:
    """A policy of 1..max_ops indices drawn uniformly from the pool (repeats allowed, as the original)."""
    if isinstance(max_ops, bool) or not isinstance(max_ops, int) or max_ops < 1:
        raise ValueError(f"max_ops={max_ops!r} must be a whole number ≥ 1")
    count = int(torch.randint(1, max_ops + 1, (1,), generator=generator, device=generator.device))
    indices = torch.randint(0, len(POOL), (count,), generator=generator, device=generator.device)
    return Policy(tuple(int(i) for i in indices.tolist()))


def transform(x: torch.Tensor, policy: Policy | Hybrid | str, generator: torch.Generator, *,
              crop_flip: bool = True, semantics: str = "ats") -> torch.Tensor:
    """The client's pipeline: random crop (pad 4) → horizontal flip (if `crop_flip`) → policy.

    x: (B, 3, H, W) in [0, 1] -> (B, 3, H, W); a string policy is parsed with `parse_policy`, and
    `Policy.none()` applies nothing after the crop and flip.
    """
    check_semantics(semantics)
    check_images(x, generator)
    policy = as_policy(policy)
    if crop_flip:
        x = random_crop_flip(x, generator)
    return policy.apply(x, generator, semantics)

"""The `ats` command: the long jobs, scriptable. `ats <verb> --help` documents every flag.

Every verb takes `--seed`, `--device` and `--json` (one JSON document on stdout; progress and
logs on stderr). Exit status: 0 on success, 2 on bad input with a one-line message (argparse's
own errors included) and nothing on stdout. Each verb is a module of this package with
`add_parser(subparsers)` and `run(args) -> int`; the maxima it checks are in `ats.limits`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
ORDER = ("attack", "score", "search", "train", "benchmark")


def verbs() -> list[str]:
    """The verbs: every module of this package, in the order of `ORDER` first."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common(parser: argparse.ArgumentParser) -> None:
    """The flags every verb takes."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the verbs that can run their work on Ray (`ats.distributed`)."""
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the work as Ray tasks: auto (this machine's cluster, started if none runs), "
                             "local, or a cluster's ray://HOST:10001 (needs pip install 'ats[ray]')")
    parser.add_argument("--gpus-per-task", type=float, default=0.0,
                        help="GPUs each Ray task asks for; fractions share a GPU (default 0: CPU workers)")
    parser.add_argument("--cpus-per-task", type=float, default=1.0,
                        help="CPUs (and torch threads) each Ray task asks for (default 1)")


def ray_options(args: argparse.Namespace):
    """The `RayOptions` the command asked for, or None without --ray; bad values fail here, before any work."""
    if args.ray is None:
        if args.gpus_per_task or args.cpus_per_task != 1.0:
            raise ValueError("--gpus-per-task and --cpus-per-task need --ray")
        return None
    from ats.distributed import RayOptions, ray_module

    options = RayOptions(address=args.ray, gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task)
    ray_module()  # installed?
    return options


def log(message: str) -> None:
    """Progress and notes go to stderr, so that --json output stays one document."""
    print(message, file=sys.stderr, flush=True)


def check_folder(path: Path, flag: str = "--out") -> Path:
    """`path`, when it is a folder or can be made one; else a ValueError naming `flag`, before any work."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{flag} {path}: {folder} exists and is not a folder; give a folder")
            if not os.access(folder, os.W_OK):
                raise ValueError(f"{flag} {path}: folder {folder} is not writable")
            break
    return path


def check_common(args: argparse.Namespace) -> None:
    """The flags every verb takes, checked: --seed in its stated range."""
    from ats.limits import MAX_SEED, check_range

    check_range("--seed", args.seed, 0, MAX_SEED)


def dumps(document) -> str:
    """`document` as strict JSON, NaN and infinities written as null (bare NaN is not JSON)."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(document), allow_nan=False)


def progress(total: int, *, unit: str = "it", disable: bool = False):
    """A tqdm progress bar with ETA on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=disable, leave=False, dynamic_ncols=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ats", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in verbs():
        importlib.import_module(f"ats.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = importlib.import_module(f"ats.cli.{args.verb}").run
    try:
        check_common(args)
        return run(args)
    except (ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"ats {args.verb}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"ats {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `ats` command: the long jobs, scriptable. `ats <verb> --help` documents every flag.

Every verb takes `--seed`, `--device` and `--json` (one JSON document on stdout; progress and
logs on stderr). Exit status: 0 on success, 2 on bad input with a one-line message. Each verb is
a module of this package with `add_parser(subparsers)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

EXIT_BAD_INPUT = 2
ORDER = ("attack", "score", "search", "train", "benchmark")


def verbs() -> list[str]:
    """The verbs: every module of this package, in the order of `ORDER` first."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def add_common(parser: argparse.ArgumentParser) -> None:
    """The flags every verb takes."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def log(message: str) -> None:
    """Progress and notes go to stderr, so that --json output stays one document."""
    print(message, file=sys.stderr, flush=True)


def progress(total: int, *, unit: str = "it", disable: bool = False):
    """A tqdm progress bar with ETA on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=disable, leave=False, dynamic_ncols=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ats", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in verbs():
        importlib.import_module(f"ats.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = importlib.import_module(f"ats.cli.{args.verb}").run
    try:
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

"""Hardening (issue 15): every bad input ends in one clear line, never a traceback, a hang or nonsense.

The command line refuses with exit status 2, one line on stderr and nothing on stdout (`--json`);
the library raises ValueError naming the bad value. A seeded fuzz of policy and defense strings
checks that every refusal is one line and every acceptance round-trips through its canonical
string; two searches on one database split the work between them.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace

import pytest
import torch

from ats import checkpoints, models, search
from ats.cli import main
from ats.federated import parse_defense
from ats.limits import MAX_PARAMETERS, check_model, parameter_count
from ats.policy import Hybrid, Policy, parse_policy
from ats.runtime import make_generator
from ats.store import ScoreRow, Store


class _Evil:
    """A pickle that would run a shell command if anything unpickled it."""

    def __reduce__(self):
        return (os.system, ("echo unpickled",))


def _smoke_definition() -> str:
    from ats.scoring import preset_config

    return replace(preset_config("smoke"), arch="lenet").definition()


def _database(path, rows: int = 20, definition: str = "def", checkpoint: str = "ck"):
    with Store.open(path) as store:
        for i in range(rows):
            store.put_score(ScoreRow(str(i), definition, checkpoint, 0, 0.1, -80.0, -1.0, (0.1,) * 40, 40, 0.1))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file, none in the WAL
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad file the issue names, beside a good LeNet checkpoint."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "file").write_text("a file, not a folder")
    lenet = checkpoints.save_checkpoint(folder / "lenet.pt", models.build_model("lenet", 100, seed=1),
                                        checkpoints.ModelMeta("lenet", "cifar100", 100, "none", recipe="test"))
    payload = torch.load(lenet, weights_only=True)
    next(v for k, v in payload["state_dict"].items() if k.endswith("weight")).view(-1)[3] = math.nan
    torch.save(payload, folder / "nan.pt")
    payload = torch.load(lenet, weights_only=True)  # 1,000 floats of one tensor with scrambled exponents
    name = max(payload["state_dict"], key=lambda k: payload["state_dict"][k].numel())
    bits = payload["state_dict"][name].view(-1)[:1000].view(torch.int32)
    bits ^= torch.randint(1, 8, bits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.int32) << 23
    torch.save(payload, folder / "scrambled.pt")
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "meta": _Evil()}, folder / "evil.pt")
    good = _database(folder / "good.db", rows=300)
    damaged = bytearray(good.read_bytes())
    for offset in range(2 * 4096, len(damaged), 4096):  # page 1 (the schema) intact, the rest garbled
        damaged[offset + 100: offset + 400] = random.Random(offset).randbytes(300)
    (folder / "corrupt.db").write_bytes(bytes(damaged))
    for name, schema in (("noscores.db", "2"), ("schema.db", "²")):
        with sqlite3.connect(folder / name) as db:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "ats-results"), ("schema", schema)])
    broken = _database(folder / "json.db", 3, _smoke_definition(), checkpoints.checkpoint_hash(lenet))
    with sqlite3.connect(broken) as db:
        db.execute("UPDATE scores SET per_image = '[0.1, 0.2' WHERE policy = '1'")
    (folder / "state.pt.state").write_bytes(b"\x80\x04 not a training state")
    found = {path.name.replace(".", "_"): str(path) for path in folder.iterdir()}
    return dict(found, state_out=str(folder / "state.pt"))  # the checkpoint whose broken .state resumes


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


# --- the command line: exit 2, one line on stderr, nothing on stdout ---------------------------

CLI_REFUSALS = [
    (["attack", "--iterations", "99999999999999999999"], "--iterations must be 1..100,000"),
    (["attack", "--iterations", "1000000000"], "--iterations must be 1..100,000"),
    (["attack", "--indices", "0-999999"], "more than 1,000 images"),
    (["attack", "--indices", "9995-10004"], "out of range 0–9999"),
    (["attack", "--restarts", "10000"], "--restarts must be 1..64"),
    (["attack", "--model", "convnet", "--restarts", "64", "--indices", "0-999"], "GiB free"),  # ~10 TB
    (["attack", "--model", "resnet20-1000"], "at most 50,000,000"),
    (["attack", "--seed", "99999999999999999999"], "--seed must be 0..4,294,967,295"),
    (["attack", "--out", "{file}"], "not a folder"),
    (["attack", "--out", "{file}/sub"], "not a folder"),
    (["attack", "--defense", "gauss-1e308"], "gauss must be 1e-06..10"),
    (["attack", "--defense", "prune-1e-300"], "prune must be 0.1..99.9"),
    (["attack", "--defense", "prune-٧٠"], "no plain number"),
    (["attack", "--defense", "prune-7_0"], "no plain number"),
    (["attack", "--policy", "3-1-7\n+43"], "line break"),
    (["attack", "--policy", "3-1-7+3-1-7"], "names 3-1-7 twice"),
    (["attack", "--policy", "3+3"], "names 3 twice"),
    (["attack", "--policy", "1" * 5000], "longer than 1,000 characters"),
    (["attack", "--policy", "-".join(["3"] * 50_001)], "longer than 1,000 characters"),
    (["attack", "--checkpoint", "{nan_pt}"], "holds NaN or infinite"),
    (["attack", "--checkpoint", "{scrambled_pt}"], "do not match the sha256"),
    (["attack", "--checkpoint", "{evil_pt}"], "it will not be unpickled"),
    (["attack", "--iterations", "x"], "invalid int value"),
    (["train", "--epochs", "1000000000"], "--epochs must be 1..1,000"),
    (["train", "--model", "resnet20-1000"], "at most 50,000,000"),
    (["train", "--recipe", "smoke", "--resume", "--out", "{state_out}"], "start over"),
    (["search", "--policies", ""], "no policies given"),
    (["search", "--candidates", "127550"], "--candidates must be 1..10,000"),
    (["search", "--db", "{corrupt_db}", "--show"], "is damaged (database disk image is malformed)"),
    (["search", "--db", "{corrupt_db}", "--policies", "3", "--preset", "smoke", "--checkpoint", "{lenet_pt}"],
     "is damaged"),
    (["search", "--db", "{noscores_db}", "--show"], "has no scores, benchmark table"),
    (["search", "--db", "{schema_db}", "--show"], "must be a whole number"),
    (["search", "--db", "{json_db}", "--show", "--preset", "smoke", "--checkpoint", "{lenet_pt}"],
     "the stored row of policy '1' is damaged"),
    (["benchmark", "--out", "{file}"], "not a folder"),
    (["benchmark", "--iterations", "0"], "--iterations must be 1..100,000"),
]


@pytest.mark.parametrize("argv, fragment", CLI_REFUSALS, ids=[" ".join(a)[:40] for a, _ in CLI_REFUSALS])
def test_bad_input_exits_2_with_one_line_and_empty_stdout(capsys, tmp_path, data_dir, files, argv, fragment):
    argv = [a.format(**files) if "{" in a else a for a in argv]
    if "--out" not in argv and argv[0] != "search":
        argv += ["--out", str(tmp_path / "out" if argv[0] != "train" else tmp_path / "m.pt")]
    started = time.perf_counter()
    code, out, err = run_cli(capsys, [*argv, "--json"])
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, out, err)
    if "--resume" in argv:  # the run is announced before its state is read: the error is the line after
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith(f"ats {argv[0]}: error:"), err
    assert fragment in lines[0]
    assert time.perf_counter() - started < 30  # refused before any work, never after a long run


def test_score_json_stays_valid_when_a_score_is_nan(capsys, monkeypatch):
    from ats.cli import score as verb
    from ats.scores import ScoreConfig

    @dataclass
    class Score:
        value: float
        normalized: float = math.nan
        passes: bool = True  # what a NaN compared with the threshold must not turn into

    class Setup:
        config, checkpoint = ScoreConfig.smoke(), "stand-in"

        def score(self, policy):
            return Score(math.nan), Score(-80.0, -1.0)

    monkeypatch.setattr(verb, "load_scoring", lambda args, device: Setup())
    code, out, _ = run_cli(capsys, ["score", "3-1-7", "--json", "--device", "cpu"])
    (document,) = json.loads(out, parse_constant=lambda name: pytest.fail(f"bare {name} in --json output"))
    assert code == 0 and document["privacy"] is None and document["passes"] is False


# --- the results database -----------------------------------------------------------------------

@pytest.mark.parametrize("name, fragment", [("corrupt_db", "is damaged"), ("noscores_db", "has no scores"),
                                            ("schema_db", "whole number"), ("json_db", "policy '1' is damaged")])
def test_a_damaged_database_is_one_value_error_naming_it(files, name, fragment):
    with pytest.raises(ValueError) as error:
        with Store.open(files[name]) as store:
            for group in store.groups():
                store.get_scores(group.definition, group.checkpoint, group.seed)
    message = str(error.value)
    assert fragment in message and files[name] in message and "\n" not in message


def test_a_read_only_database_reads_and_refuses_writes_in_one_line(tmp_path):
    row = ScoreRow("7", "def", "ck", 0, 0.1, -80.0, -1.0, (0.1,), 1, 0.1)
    with Store.open(_database(tmp_path / "ro.db")) as store:
        store._db.execute("PRAGMA query_only = ON")  # SQLite's own read-only switch: works for root too
        with pytest.raises(ValueError, match="ro.db is read-only"):
            store.put_score(row)
    if os.geteuid() == 0:
        pytest.skip("file permissions do not bind root; the read-only path above was checked")
    path = _database(tmp_path / "file.db")
    path.chmod(0o444)  # a read-only file in a writable folder
    with Store.open(path) as store:
        assert len(store.get_scores("def", "ck", 0)) == 20
        with pytest.raises(ValueError, match="file.db is read-only"):
            store.put_score(row)


# --- checkpoints and training states --------------------------------------------------------------

def test_checkpoints_carry_a_checksum_and_refuse_changed_or_non_finite_weights(files, tmp_path):
    payload = torch.load(files["lenet_pt"], weights_only=True)
    assert payload["sha256"] == checkpoints.weights_sha256(payload["state_dict"])
    del payload["sha256"]  # as older versions wrote it: still loads
    torch.save(payload, tmp_path / "old.pt")
    checkpoints.load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="do not match the sha256"):
        checkpoints.load_checkpoint(files["scrambled_pt"])
    with pytest.raises(ValueError, match=r"tensor '.*weight' holds NaN"):
        checkpoints.load_checkpoint(files["nan_pt"])
    next(v for k, v in payload["state_dict"].items() if k.endswith("bias"))[0] = math.inf
    torch.save(payload, tmp_path / "inf.pt")  # no checksum to catch it: the finiteness check does
    with pytest.raises(ValueError, match="holds NaN or infinite"):
        checkpoints.load_checkpoint(tmp_path / "inf.pt")
    for path in checkpoints.shipped_checkpoints():  # written before checksums: they load unchanged
        assert checkpoints.load_checkpoint(path)[1].arch


def test_a_hostile_checkpoint_is_refused_in_one_line_and_never_run(files, capfd):
    with pytest.raises(ValueError) as error:
        checkpoints.load_checkpoint(files["evil_pt"])
    assert "asks for posix.system" in str(error.value) or "asks for os.system" in str(error.value)
    assert "will not be unpickled" in str(error.value) and "\n" not in str(error.value)
    assert "unpickled" not in capfd.readouterr().out  # the shell command never ran


def _truncated(path):
    state = {"format": "ats-train-state/1", "epoch": 1, "model": {"w": torch.zeros(100)}}
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[:-200])


@pytest.mark.parametrize("write", [
    lambda path: path.write_bytes(random.Random(0).randbytes(4096)),
    _truncated,
    lambda path: torch.save({"format": "ats-train-state/1", "identity": _Evil()}, path),
    lambda path: torch.save([1, 2, 3], path),
], ids=["random", "truncated", "hostile-pickle", "list"])
def test_a_broken_training_state_is_refused_naming_the_file(tmp_path, data_dir, write):
    from ats import data
    from ats.recipes import TrainRecipe
    from ats.train import state_path, train

    images = data.load_dataset("cifar100", "test").subset(range(50))
    out = tmp_path / "model.pt"
    write(state_path(out))
    with pytest.raises(ValueError) as error:
        train(replace(TrainRecipe.smoke(), data_fraction=1.0), data=images, out=out, resume=True)
    assert str(state_path(out)) in str(error.value) and "start over" in str(error.value)


def test_a_training_state_of_the_right_run_with_wrong_contents_is_damaged(tmp_path, data_dir):
    from ats import data
    from ats.recipes import TrainRecipe
    from ats.train import _Run, state_path, train

    recipe, images = replace(TrainRecipe.smoke(), data_fraction=1.0), data.load_dataset("cifar100", "test")
    images = images.subset(range(50))
    state = _Run.start(recipe, images, Policy.none(), 0, torch.device("cpu")).state()
    state["model"] = {"not": torch.zeros(1)}
    torch.save(state, state_path(tmp_path / "m.pt"))
    with pytest.raises(ValueError, match=r"m.pt.state is damaged .*start over"):
        train(recipe, data=images, out=tmp_path / "m.pt", resume=True)


# --- policies, defenses, seeds, model sizes --------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("3-1-7\n+43-18-18", "line break"), ("3-1-7\t", "a tab"), ("3\u00a0-1", "U+00A0"),
    ("3-1-7+3-1-7", "names 3-1-7 twice"), ("3+3", "names 3 twice"), ("none+none", "names none twice"),
    ("-".join(["3"] * 17), "at most 16 ops"), ("+".join(str(i) for i in range(9)), "at most 8"),
    ("1" * 999, "out of range 0–49"), ("1" * 5000, "longer than 1,000"),
])
def test_lenient_policy_strings_are_refused(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        parse_policy(text)
    assert len(str(error.value)) < 300


def test_distinct_hybrids_and_spaces_around_separators_still_parse():
    assert parse_policy(" 3 - 1 -7 + 43-18-18 ") == Hybrid((Policy((3, 1, 7)), Policy((43, 18, 18))))
    assert str(parse_policy("+".join(str(i) for i in range(8)))) == "0+1+2+3+4+5+6+7"
    assert len(parse_policy("-".join(["3"] * 16)).indices) == 16


@pytest.mark.parametrize("text, fragment", [
    ("gauss-1e308", "gauss must be"), ("lap-1e-300", "lap must be"), ("prune-1e-300", "prune must be"),
    ("prune-99.95", "prune must be"), ("prune-٧٠", "no plain number"), ("prune-7_0", "no plain number"),
    ("prune-７０", "no plain number"), ("gauss-inf", "no plain number"), ("gauss-1e-3 ", None),
])
def test_defense_amounts_are_plain_ascii_decimals_in_range(text, fragment):
    if fragment is None:
        assert str(parse_defense(text)) == "gauss-1e-3"
        return
    with pytest.raises(ValueError, match=fragment):
        parse_defense(text)


def test_seeds_and_model_sizes_have_stated_bounds():
    with pytest.raises(ValueError, match="seed 18446744073709551616 must be"):
        make_generator(2**64)
    assert make_generator(2**32 - 1).initial_seed() == 2**32 - 1
    assert parameter_count("resnet20") == 278_324 and parameter_count("resnet20-4") < MAX_PARAMETERS
    with pytest.raises(ValueError, match="resnet20-1000.*at most 50,000,000"):
        check_model("resnet20-1000")
    with pytest.raises(ValueError, match="vgg"):
        check_model("vgg")


# --- a seeded fuzz of policy and defense strings ---------------------------------------------------

_PIECES = ["3", "1", "7", "43", "18", "49", "50", "0", "00", "007", "99999", "-", "-", "-", "+", "+", " ", "none",
           "NONE", "\n", "\t", "−", "–", "٣", "３", "1.5", "e", ".", ",", "_", "\x00", "\u00a0", "x", "", "1" * 60]
_KINDS = ["prune", "gauss", "gaussian", "lap", "laplace", "laplacian", "PRUNE", "noise", "", "none"]
_NUMBERS = ["70", "99.9", "99.99", "0.1", "0.05", "1e-3", "1E-2", "1e-6", "1e-7", "10", "11", "1e308", "1e-300",
            "٧٠", "7_0", "inf", "nan", "-1", "+1", ".5", "5.", "1e", "e3", "1e-3-", " 70", "70 ", "0x10", "1" * 40]


def _fuzz_strings(count: int) -> tuple[list[str], list[str]]:
    """`count` policy strings (well-formed ones, half of them with a random piece inserted) and
    `count` defense strings (a kind, a separator and a number, each drawn from near-misses too)."""
    generator = random.Random(15)
    policies = []
    for _ in range(count):
        parts = ["-".join(str(generator.randint(0, 52)) for _ in range(generator.randint(1, 4)))
                 for _ in range(generator.randint(1, 3))]
        text = "+".join(parts)
        if generator.random() < 0.5:
            at = generator.randint(0, len(text))
            text = text[:at] + generator.choice(_PIECES) + text[at:]
        policies.append(text)
    defenses = [generator.choice(_KINDS) + generator.choice(["-", "-", "--", "", "_"]) + generator.choice(_NUMBERS)
                for _ in range(count)]
    return policies, defenses


def _fuzz(parse, texts: list[str]) -> tuple[int, int]:
    """(refused, accepted): every refusal a one-line ValueError, every acceptance stable through str()."""
    refused = accepted = 0
    for text in texts:
        try:
            value = parse(text)
        except ValueError as error:
            message = str(error)
            assert message and "\n" not in message and len(message) < 400, (text, message)
            refused += 1
            continue
        assert parse(str(value)) == value and str(parse(str(value))) == str(value), text
        accepted += 1
    return refused, accepted


def test_fuzzed_policy_and_defense_strings_are_refused_in_one_line_or_round_trip():
    policies, defenses = _fuzz_strings(400)
    started = time.perf_counter()
    refused, accepted = _fuzz(parse_policy, policies)
    assert refused + accepted == 400 and refused > 100 and accepted > 20  # both paths are exercised
    refused, accepted = _fuzz(parse_defense, defenses)
    assert refused + accepted == 400 and refused > 100 and accepted > 20
    assert time.perf_counter() - started < 5


# --- two searches on one database split the work ----------------------------------------------------

@dataclass(frozen=True)
class _Config:
    privacy_images: int = 2

    def definition(self) -> str:
        return "stand-in images=2"


@dataclass(frozen=True)
class _Score:
    value: float
    per_image: torch.Tensor = torch.zeros(2)
    normalized: float = -1.0


def test_two_writers_in_one_store_split_the_policies(tmp_path):
    policies, calls, lock = search.candidates(12, seed=0), [], threading.Lock()
    start = threading.Barrier(2)

    def scorer(policy, **_):
        with lock:
            calls.append(str(policy))
        time.sleep(0.05)  # long enough for the writers to overlap
        return _Score(0.1), _Score(-80.0)

    results = {}

    def writer(name: str) -> None:
        with Store.open(tmp_path / "shared.db") as store:
            start.wait(timeout=30)
            results[name] = search.run_search(policies, store=store, privacy_model=None, accuracy_model=None,
                                              data=None, config=_Config(), seed=0, checkpoint_hash="ck",
                                              scorer=scorer, poll=0.02)

    Store.open(tmp_path / "shared.db").close()  # created first: the writers race only for the policies
    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    a, b = results["a"], results["b"]
    assert sorted(calls) == sorted(str(p) for p in policies)  # each policy scored exactly once
    assert a.scored + b.scored == 12 and a.scored >= 2 and b.scored >= 2
    assert a.by_others == b.scored and len(a.rows) == len(b.rows) == 12
    with Store.open(tmp_path / "shared.db") as store:
        assert store._db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim dropped


def test_a_dead_writers_claim_is_taken_over(tmp_path):
    with Store.open(tmp_path / "r.db") as store:
        store._db.execute("INSERT INTO claims VALUES ('3', 'def', 'ck', 0, ?, ?)",
                          (f"{os.uname().nodename}/999999999/dead", time.time()))
        assert store.claim("3", "def", "ck", 0)  # no such process: the claim lapsed
    with Store.open(tmp_path / "r.db") as first, Store.open(tmp_path / "r.db") as second:
        assert first.claim("4", "def", "ck", 0) and not second.claim("4", "def", "ck", 0)


@pytest.mark.slow
def test_two_smoke_searches_on_one_database_split_the_candidates(tmp_path, data_dir, files):
    db = tmp_path / "results.db"
    command = [sys.executable, "-c", "import sys; from ats.cli import main; sys.exit(main())", "search",
               "--candidates", "12", "--preset", "smoke", "--db", str(db), "--checkpoint", files["lenet_pt"],
               "--device", "cpu", "--json"]
    environment = dict(os.environ, ATS_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    writers = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    documents = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        documents.append(json.loads(out))
    scored = [d["scored"] for d in documents]
    print(f"two smoke searches of 12 candidates: computed {scored[0]} + {scored[1]} = {sum(scored)}")
    assert sum(scored) <= 12 + 2 and all(d["rows"] == 12 for d in documents)
    with sqlite3.connect(db) as connection:
        policies = [r[0] for r in connection.execute("SELECT policy FROM scores")]
    assert sorted(policies) == sorted(str(p) for p in search.candidates(12, seed=0))  # none lost, none twice

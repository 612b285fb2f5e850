"""The benchmark protocol at the smoke preset: one cell per policy × defense, defended gradients,
resuming without recomputing, the policy-aware attacker, the correlation study and `ats benchmark`."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from ats import attacks, benchmark, checkpoints, models, report, stats, tables
from ats.benchmark import BenchmarkConfig, run_benchmark
from ats.store import Store

pytestmark = pytest.mark.slow
SMOKE = BenchmarkConfig.smoke()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    """One full smoke benchmark, recording every update the attacker was given."""
    folder = tmp_path_factory.mktemp("bench")
    seen = []
    original = attacks.reconstruct

    def spy(model, update, config=None, **kwargs):
        if model.arch == SMOKE.recipe.arch:  # the table's model, not a regime's
            seen.append((str(kwargs["policy"]), update.defense, config.name, update.gradients))
        return original(model, update, config, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(benchmark.attacks, "reconstruct", spy)
    try:
        with Store.open(folder / "bench.db") as store:
            result = run_benchmark(SMOKE, store=store, workdir=folder, data_root=data_dir)
    finally:
        mp.undo()
    return folder, result, seen


def test_one_row_per_policy_and_defense_plus_aware_and_correlation(smoke_run):
    folder, result, _ = smoke_run
    table = [r for r in result.rows if r.study == "table"]
    assert [(r.policy, r.defense) for r in table] == [(p, d) for p in SMOKE.policies for d in SMOKE.defenses]
    assert [r.policy for r in result.rows if r.study == "aware"] == ["3-1-7"]
    assert len([r for r in result.rows if r.study == "correlation"]) == SMOKE.correlation
    staged = [(r.policy, r.summary["stage"]) for r in result.rows if r.study == "stages"]
    assert staged == [("none", 0)] and all(r.summary["stage"] == SMOKE.recipe.epochs for r in table)
    regime = [r for r in result.rows if r.study == "regime"]
    assert [(r.summary["arch"], r.attack, r.iterations) for r in regime] == [("lenet", "ig", 3)]
    assert result.computed == len(result.rows) == 6 + 1 + 1 + 2 + 1 + 3
    for r in table:
        s = r.summary
        assert math.isfinite(s["psnr_tx_mean"]) and math.isfinite(s["psnr_x_mean"]) and s["failed"] == 0
        assert 0 <= s["accuracy"] <= 1 and r.images == SMOKE.images and r.iterations == SMOKE.attack.iterations
        assert len(r.per_image) == SMOKE.images
    # without a policy the client sends x itself: PSNR against T(x) and x coincide; with one they differ
    none = next(r for r in table if r.policy == "none" and r.defense == "none").summary
    assert none["psnr_tx_mean"] == pytest.approx(none["psnr_x_mean"])
    policy = next(r for r in table if r.policy == "3-1-7" and r.defense == "none").summary
    assert policy["psnr_tx_mean"] != pytest.approx(policy["psnr_x_mean"], abs=1e-3)
    # every policy got its own model, trained with that policy
    for name, path in result.checkpoints.items():  # "<arch> <policy> <defense> e<stage>"
        arch, policy, defense, stage = name.split()
        meta = checkpoints.load_checkpoint(path)[1]
        assert (meta.arch, meta.policy, meta.defense, f"e{meta.epochs}") == (arch, policy, defense, stage)
    corr = result.correlation["vs_transformed"]
    assert corr["n"] == 3 and -1 <= corr["pearson"] <= 1
    assert all(math.isfinite(r.summary["privacy"]) for r in result.rows if r.study == "correlation")


def test_threat_cells_attack_aggregated_updates_paired_with_fedsgd(smoke_run, tmp_path):
    folder, result, seen = smoke_run
    threat = [r for r in result.rows if r.study == "threat"]
    assert [(r.policy, r.summary["threat"], r.attack) for r in threat] == [
        ("none", "batch-2", "ig@batch-2"), ("none", "fedavg-1-2", "ig@fedavg-1-2")]
    fedsgd = next(r for r in result.rows if r.study == "table" and r.policy == "none" and r.defense == "none")
    for r in threat:  # the same victim and images as the FedSGD cell, every image scored
        assert r.checkpoint == fedsgd.checkpoint and [i["index"] for i in r.per_image] == [0, 1]
        assert all(math.isfinite(i["psnr_x"]) for i in r.per_image)
    aggregated = [grads for _, _, name, grads in seen if grads[0].shape[0] != SMOKE.images]
    assert len(aggregated) == 2  # one joint gradient (no per-image dimension) for each threat cell
    flats = {(f["study"], f.get("threat")): f for f in tables.evidence_table(result)}
    assert flats[("threat", "batch-2")]["reference"] == "table none/none"
    assert "## Beyond one gradient" in report.write_report(result, tmp_path / "r.md", command="test", device="cpu").read_text()
    rows = {(r["study"], r["threat"], r["defense"]) for r in csv.DictReader(report.write_csv(result, tmp_path / "b.csv").open())}
    assert ("threat", "fedavg-1-2", "none") in rows and ("table", "fedsgd", "dp-1-0.5") in rows


def test_dp_rows_carry_the_epsilon_of_the_attacked_update(smoke_run):
    from ats.privacy import update_epsilon

    _, result, seen = smoke_run
    dp = [r for r in result.rows if r.defense == "dp-1-0.5"]
    assert len(dp) == 2 and all(r.summary["epsilon_update"] == pytest.approx(update_epsilon(0.5)) for r in dp)
    assert all("epsilon_train" not in r.summary for r in dp)  # smoke trains without the defense
    for policy, defense, _, grads in seen:
        if defense == "dp-1-0.5":  # per-image updates, each clipped to 1 before noise σ·C = 0.5 per entry
            noise = torch.cat([g.flatten(1) for g in grads], 1).std(dim=1)
            assert bool(((noise - 0.5).abs() < 0.05).all()), noise
    assert "ε" in tables.markdown_table(result)


def test_defended_rows_attack_the_defended_gradients(smoke_run):
    _, _, seen = smoke_run
    by_cell = {}
    for policy, defense, name, grads in seen:  # the table's cells come first (the stages study after)
        by_cell.setdefault((policy, defense, name), grads)
    for policy in SMOKE.policies:
        plain, pruned = by_cell[(policy, "none", "ig")], by_cell[(policy, "prune-70", "ig")]
        for g, p in zip(plain, pruned):
            per_image = p.reshape(p.shape[0], -1)
            zeros = (per_image == 0).sum(dim=1)
            floor = math.floor(0.7 * per_image.shape[1])  # the original zeroes ⌊p %·numel⌋ entries per tensor
            assert bool((zeros >= floor).all()), "prune-70 must zero 70 % of each tensor of each image's gradient"
            kept = per_image != 0
            assert torch.equal(per_image[kept], g.reshape(g.shape[0], -1)[kept])  # the rest untouched
    assert {d for _, d, _, _ in seen} == set(SMOKE.defenses)
    assert any(name == "aware" for _, _, name, _ in seen)


def test_outputs_csv_markdown_scatter_and_report(smoke_run, tmp_path):
    folder, result, _ = smoke_run
    path = report.write_csv(result, tmp_path / "b.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(result.rows)
    report.check_columns(rows[0].keys())  # the app's benchmark page reads this file
    table = report.markdown_table(result)
    assert table.count("\n") == 1 + len(SMOKE.policies) * len(SMOKE.defenses) and "13.88" in table  # header, rule, cells
    assert "3-1-7" in report.markdown_aware(result)
    scatter = report.save_scatter(result, tmp_path / "c.png")
    assert scatter.stat().st_size > 1000
    text = report.write_report(result, tmp_path / "r.md", command="ats benchmark --preset smoke", device="cpu",
                               scatter=scatter).read_text()
    for needle in ("Tables 1 and 3", "policy-aware", "Pearson", "--preset paper", "c.png"):
        assert needle in text


def test_cell_summaries_use_the_per_image_names_of_evaluation(smoke_run):
    _, result, _ = smoke_run
    for r in result.rows:  # "_x" against x, "_tx" against T(x), in the summary as in each image
        for key in ("psnr_x", "psnr_tx", "ssim_x", "ssim_tx"):
            values = [i[key] for i in r.per_image if i["status"] == "ok" and i[key] is not None]
            assert r.summary[f"{key}_mean"] == pytest.approx(sum(values) / len(values))


def test_a_csv_of_an_older_version_reads_with_the_new_column_names(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("study,policy,defense,psnr_mean,psnr_std,psnr_original_mean,psnr_original_std,ssim_mean,"
                    "ssim_original_mean,accuracy\ntable,none,none,14.1,1.2,13.9,1.1,0.5,0.4,0.70\n")
    header, values = [line.split(",") for line in path.read_text().splitlines()]
    columns = report.normalize_columns(header)
    assert columns == ["study", "policy", "defense", "psnr_tx_mean", "psnr_tx_std", "psnr_x_mean", "psnr_x_std",
                       "ssim_tx_mean", "ssim_x_mean", "accuracy"]
    report.check_columns(columns)
    assert dict(zip(columns, values))["psnr_x_mean"] == "13.9"
    assert report.normalize_columns(report.CSV_COLUMNS) == list(report.CSV_COLUMNS)  # today's names stay


def test_interrupted_benchmark_resumes_without_recomputing_or_losing_rows(tmp_path, data_dir):
    config = replace(SMOKE, correlation=0, regimes=(), defenses=("none", "prune-70"), threats=())
    db = tmp_path / "b.db"
    computed = []

    def stop_after_two(event):
        if event.row is not None and not event.skipped:
            computed.append(event.row.key)
            if len(computed) == 2:
                raise KeyboardInterrupt

    with Store.open(db) as store, pytest.raises(KeyboardInterrupt):
        run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir, callback=stop_after_two)
    with Store.open(db) as store:
        before = {r.key: r for r in store.benchmark_rows()}
    assert set(before) == set(computed)
    with Store.open(db) as store:
        result = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
        after = store.benchmark_rows()
    assert result.computed == len(result.rows) - 2 == 4
    assert len(after) == len({r.key for r in after}) == 6  # nothing duplicated
    for key, row in before.items():  # finished rows were reused as they were, not recomputed
        again = next(r for r in after if r.key == key)
        assert again.created == row.created and again.summary == row.summary


def test_an_existing_model_of_another_policy_is_refused(tmp_path, data_dir):
    config = replace(SMOKE, policies=("none",), defenses=("none",), aware=False, correlation=0, stages=(), regimes=())
    with Store.open(tmp_path / "b.db") as store:
        result = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
    path = result.checkpoints["resnet20 none none e2"]
    other = path.replace("-none-", "-3-1-7-")
    os.rename(path, other)
    config = replace(config, policies=("3-1-7",))
    with Store.open(tmp_path / "b.db") as store, pytest.raises(ValueError, match="policy 'none'"):
        run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)


@pytest.mark.parametrize("change, message", [
    ({"policies": ("3--1",)}, "3--1"), ({"defenses": ("prune-101",)}, "prune"), ({"images": 0}, "images"),
    ({"correlation": 2}, "at least 3"), ({"policies": ()}, "at least one policy"),
])
def test_bad_configs_fail_before_any_work(change, message):
    with pytest.raises(ValueError, match=message):
        replace(SMOKE, **change)


def test_random_policies_are_seeded_and_new():
    config = replace(SMOKE, random=3)
    policies = config.table_policies(seed=0)
    assert policies[:2] == ("none", "3-1-7") and len(set(policies)) == 5
    assert config.table_policies(seed=0) == policies and config.table_policies(seed=1) != policies


def test_correlation_is_pearson_and_spearman_and_drops_nan():
    c = stats.correlation([1, 2, 3, 4, math.nan], [2, 4, 6, 9, 1])
    assert c["n"] == 4 and c["pearson"] == pytest.approx(0.99438, abs=1e-4) and c["spearman"] == pytest.approx(1.0)
    assert math.isnan(stats.correlation([1, 2], [1, 2])["pearson"])


# --- the command ---------------------------------------------------------------------------------

def _ats(*args, data_dir, cwd):
    env = {**os.environ, "ATS_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "ats.cli", "benchmark", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_ats_benchmark_smoke_json_and_resume(tmp_path, data_dir):
    args = ("--preset", "smoke", "--db", "b.db", "--out", "out", "--correlation", "0", "--json")
    first = _ats(*args, data_dir=data_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["cells"] == 11 and document["computed"] == 11  # 6 table, stage, aware, 2 threats, regime
    assert {"psnr_x_ci_low", "baseline_mean_colour_median", "stage"} <= set(document["rows"][0])
    assert {row["threat"] for row in document["rows"] if row["study"] == "threat"} == {"batch-2", "fedavg-1-2"}
    assert "epsilon_update" in next(row for row in document["rows"] if row["defense"].startswith("dp-"))
    assert len(list(csv.DictReader((tmp_path / "out" / "benchmark.csv").open()))) == 11
    second = _ats(*args, data_dir=data_dir, cwd=tmp_path)
    assert second.returncode == 0 and json.loads(second.stdout)["computed"] == 0


@pytest.mark.parametrize("bad, message", [
    (("--policies", "none,3--1"), "3--1"), (("--defenses", "gauss-x"), "gauss"), (("--attack", "nope"), "nope"),
    (("--stages", "0,one"), "--stages"), (("--stages", "0,99"), "stages"),
])
def test_ats_benchmark_bad_input_exits_2_with_one_line(tmp_path, data_dir, bad, message):
    out = _ats("--preset", "smoke", "--db", "b.db", *bad, data_dir=data_dir, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "b.db").exists() or Store.open(tmp_path / "b.db").benchmark_rows() == []


def test_correlation_cells_are_keyed_by_the_privacy_model(tmp_path, data_dir):
    """Another S_pri model gives other S_pri values: its correlation cells are recomputed, not reused."""
    config = replace(SMOKE, policies=("none",), defenses=("none",), aware=False, correlation=3, stages=(), regimes=(),
                     threats=())
    other = checkpoints.save_checkpoint(tmp_path / "other.pt", models.build_model("resnet20", 100, seed=5),
                                   checkpoints.ModelMeta("resnet20", "cifar100", 100, "cifar100"))
    with Store.open(tmp_path / "b.db") as store:
        first = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
        again = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
        swapped = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir, score_checkpoint=other)
    assert (first.computed, again.computed, swapped.computed) == (4, 0, 3)  # only the correlation cells again
    before = [r.summary["privacy"] for r in first.rows if r.study == "correlation"]
    after = [r.summary["privacy"] for r in swapped.rows if r.study == "correlation"]
    assert before != after


# --- evidence: baselines, intervals, paired tests, grids, defended training, kill -9 ------------------

def test_cells_carry_baselines_intervals_and_the_paired_evidence(smoke_run, tmp_path):
    folder, result, _ = smoke_run
    for r in result.rows:
        s = r.summary
        for key in ("baseline_grey_median", "baseline_mean_colour_median", "baseline_tx_median",
                    "psnr_x_aligned_median"):
            assert math.isfinite(s[key]), key
        assert s["psnr_x_ci_low"] <= s["psnr_x_median"] <= s["psnr_x_ci_high"]
        assert s["psnr_x_aligned_median"] >= s["psnr_x_median"] - 1e-6  # no alignment is one of the candidates
        kept = torch.load(benchmark.grid_path(folder, benchmark.CellKey(*r.key)), weights_only=True)
        assert kept["recon"].shape == (SMOKE.grid_images, 3, 32, 32) and kept["recon"].dtype == torch.uint8
    rows = list(csv.DictReader(report.write_csv(result, tmp_path / "b.csv").open()))
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    reference = next(r for r in rows if r["study"] == "table" and r["policy"] == "none" and r["defense"] == "none")
    assert reference["p_adjusted"] == "" and reference["leaks"] in ("True", "False")
    compared = [r for r in rows if r["study"] in ("table", "aware") and r is not reference]
    assert compared and all(0 <= float(r["p_adjusted"]) <= 1 and float(r["p_adjusted"]) >= float(r["p"])
                            for r in compared)
    # 4 smoke iterations recover nothing: the report must say so rather than rank the defenses
    assert "no leakage measured" in report.markdown_baselines(result)
    assert any("does **not** leak" in line for line in report.findings(result))


def test_the_report_draws_the_grids_and_the_stages(smoke_run, tmp_path, data_dir):
    folder, result, _ = smoke_run
    from ats import data
    from ats.indices import ATTACK_SET

    x, _ = data.load_dataset("cifar100", "test", root=data_dir).batch(ATTACK_SET[:2], "cpu")
    text = report.write_report(result, tmp_path / "r.md", command="ats benchmark --preset smoke", device="cpu",
                               workdir=folder, images=x, timing={"invocations": 2, "seconds": 90, "peak_mib": 512})
    text = text.read_text()
    for name in ("r-grid-table.png", "r-grid-regime.png", "r-stages.png"):
        assert f"figures/{name}" in text and (tmp_path / "figures" / name).stat().st_size > 1000
    assert "Leakage over training" in text and "1.5 min wall time" in text and "512 MiB" in text
    from ats.figures import grid_rows

    labels = [label for label, images, _ in grid_rows(result, folder, x, "regime")]
    assert labels == ["x", "ig lenet e0 none"]  # named by model and stage; no T(x) row when T(x) = x
    table = [label for label, _, _ in grid_rows(result, folder, x, "table")]
    assert table[:3] == ["x", "ig none", "T(x) 3-1-7"] and "aware-r2-s2 3-1-7" in table


def test_train_defense_trains_each_defended_model_under_its_defense(tmp_path, data_dir):
    config = replace(SMOKE, policies=("none",), defenses=("none", "prune-70"), aware=False, correlation=0,
                     stages=(), regimes=(), train_defense=True, threats=())
    with Store.open(tmp_path / "b.db") as store:
        result = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
    assert set(result.checkpoints) == {"resnet20 none none e2", "resnet20 none prune-70 e2"}
    meta = checkpoints.load_checkpoint(result.checkpoints["resnet20 none prune-70 e2"])[1]
    assert meta.defense == "prune-70"
    plain, defended = result.rows
    assert plain.checkpoint != defended.checkpoint and defended.summary["accuracy"] == pytest.approx(meta.accuracy)


def test_train_defense_trains_a_dp_model_with_dp_sgd_and_reports_its_epsilon(tmp_path, data_dir):
    from ats.privacy import training_epsilon

    recipe = replace(SMOKE.recipe, arch="lenet", epochs=1)
    config = replace(SMOKE, recipe=recipe, stage=1, policies=("none",), defenses=("none", "dp-1-0.5"), aware=False,
                     correlation=0, stages=(), regimes=(), train_defense=True, threats=())
    with Store.open(tmp_path / "b.db") as store:
        result = run_benchmark(config, store=store, workdir=tmp_path, data_root=data_dir)
    meta = checkpoints.load_checkpoint(result.checkpoints["lenet none dp-1-0.5 e1"])[1]
    assert meta.defense == "dp-1-0.5"
    plain, dp = result.rows
    assert plain.checkpoint != dp.checkpoint and dp.summary["accuracy"] == pytest.approx(meta.accuracy)
    assert dp.summary["epsilon_train"] == pytest.approx(training_epsilon(0.5, recipe.batch_size, 200, 1))
    assert "its training" in tables.markdown_table(result)
    with pytest.raises(ValueError, match="BatchNorm"):  # ResNet20 cannot be trained under DP-SGD
        replace(config, recipe=SMOKE.recipe, stage=2)


def test_a_benchmark_killed_with_sigkill_resumes_without_losing_or_recomputing(tmp_path, data_dir):
    import signal
    import time

    args = [sys.executable, "-m", "ats.cli", "benchmark", "--preset", "smoke", "--db", "b.db", "--out", "out",
            "--correlation", "3", "--json"]
    env = {**os.environ, "ATS_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "b.db").exists():
                with Store.open(tmp_path / "b.db") as store:
                    if len(store.benchmark_rows()) >= 3:
                        break
            time.sleep(0.2)
        assert process.poll() is None, "the smoke benchmark finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    with Store.open(tmp_path / "b.db") as store:
        before = {r.key: r.created for r in store.benchmark_rows()}
    again = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["computed"] == document["cells"] - len(before)
    with Store.open(tmp_path / "b.db") as store:
        after = store.benchmark_rows()
    assert len(after) == len({r.key for r in after}) == document["cells"]
    assert all(r.created == before[r.key] for r in after if r.key in before)


def test_defense_policies_and_the_correlation_budget_shape_the_plan():
    """At laptop the defenses attack only the undefended policy and the correlation study has its
    own budget (in its store key, so a run at another budget is not mistaken for it)."""
    from ats import cells

    config = replace(SMOKE, policies=("none", "3-1-7", "43-18-18"), defenses=("none", "prune-70", "gauss-1e-2"),
                     defense_policies=("none",), correlation=3, correlation_iterations=2)
    table = [(c.policy, c.defense) for c in cells.plan_cells(config, seed=0) if c.study == "table"]
    assert table == [("none", "none"), ("none", "prune-70"), ("none", "gauss-1e-2"),
                     ("3-1-7", "none"), ("43-18-18", "none")]
    every = replace(config, defense_policies=None)
    assert len([c for c in cells.plan_cells(every, seed=0) if c.study == "table"]) == 9
    planned = cells.plan_cells(config, seed=0)
    correlation = next(c for c in planned if c.study == "correlation")
    assert cells.cell_attack(correlation, config).iterations == 2
    assert cells.cell_attack(next(c for c in planned if c.study == "table"), config).iterations == 4
    key = cells.cell_key(correlation, config, digest="d", seed=0)
    assert key.iterations == 2 and cells.cell_key(correlation, replace(config, correlation_iterations=0),
                                                  digest="d", seed=0).iterations == 4
    with pytest.raises(ValueError, match="3--1"):
        replace(config, defense_policies=("3--1",))
    with pytest.raises(ValueError, match="correlation_iterations"):
        replace(config, correlation_iterations=-1)
    laptop = BenchmarkConfig.laptop()
    laptop_table = [c for c in cells.plan_cells(laptop, seed=0) if c.study == "table"]
    assert len(laptop_table) == 6 and {c.policy for c in laptop_table if c.defense != "none"} == {"none"}


def test_explicit_defenses_on_the_command_line_apply_to_every_policy():
    from ats.cli import build_parser
    from ats.cli.benchmark import benchmark_config

    parser = build_parser()
    laptop = benchmark_config(parser.parse_args(["benchmark", "--preset", "laptop"]))
    assert laptop.defense_policies == ("none",) and laptop.correlation_iterations == 40
    chosen = benchmark_config(parser.parse_args(["benchmark", "--preset", "laptop", "--defenses", "none,prune-70",
                                                 "--correlation-iterations", "0"]))
    assert chosen.defense_policies is None and chosen.correlation_iterations == 0

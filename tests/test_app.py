"""The Streamlit app, headless through `streamlit.testing.v1.AppTest`, at the smoke budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ats import checkpoints, compare, models
from ats.store import ScoreRow, Store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "app_pages" / f"{name}.py"), default_timeout=180)


def router() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)


def widget(elements, label: str):
    """The widget among `elements` whose label starts with `label`."""
    found = [e for e in elements if e.label.startswith(label)]
    assert found, f"no widget labelled {label!r} among {[e.label for e in elements]}"
    return found[0]


def test_router_loads_the_playground_and_shows_the_device(data_dir):
    at = router().run()
    assert not at.exception
    assert at.title[0].value == "Attack playground"
    assert "Device" in at.sidebar.markdown[0].value


@pytest.fixture
def media(monkeypatch) -> list:
    """The in-memory media stores AppTest creates, to read back what a download button offers."""
    import streamlit.testing.v1.app_test as app_test

    stores = []

    class Recording(app_test.MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return stores


def downloaded(media: list, button) -> bytes:
    return media[-1].get_file(button.proto.url.rsplit("/", 1)[-1]).content


def run_playground(at: AppTest, iterations: int = 4) -> AppTest:
    """Press Run at the smoke budget: a few iterations, a frame every other one."""
    at.number_input(key="iterations").set_value(iterations)
    at.slider(key="every").set_value(2)
    token = at.session_state["run_token"]
    at.button(key=f"run_{token}").click().run()
    assert not at.exception, at.exception
    return at


def labelled(at: AppTest, label: str) -> list:
    return [m for m in at.metric if m.label == label]


def test_compare_mode_attacks_three_settings_side_by_side_beside_their_baselines(data_dir, media):
    at = page("playground").run()
    assert not at.exception and not at.error
    assert len(at.get("image")) >= 12 + 50 + 3  # the image gallery, the op gallery, a T(x) per setting
    assert any(m.value.startswith("**Before you run:** about") and "one batched idlg call" in m.value
               for m in at.markdown)
    run_playground(at)
    for label in ("PSNR vs x", "aligned PSNR vs x", "PSNR vs T(x)"):
        assert len(labelled(at, label)) == 3, label  # one column per setting
    assert all("vs its mean colour" in m.delta for m in labelled(at, "PSNR vs x"))
    assert sum("flat grey" in c.value and "mean colour" in c.value for c in at.caption) == 3
    assert sum(m.value.startswith(tuple(f"**{r}**" for r in compare.READINGS)) for m in at.markdown) == 3
    assert sum(c.value.startswith("**S_pri**") for c in at.caption) == 3  # the scores beside the run
    run = at.session_state["last_run"]
    assert [s.policy for s in run["settings"]] == ["none", "3-1-7", "3-1-7+43-18-18"]
    assert len({r.psnr_x for r in run["results"]}) == 3
    png, document, table = (downloaded(media, b) for b in at.get("download_button"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads(document)
    assert [s["policy"] for s in document["settings"]] == ["none", "3-1-7", "3-1-7+43-18-18"]
    assert document["settings"][0]["psnr_x"] == pytest.approx(run["results"][0].psnr_x)
    assert table.decode().splitlines()[0].startswith("setting,policy,defense,attack")
    history = at.dataframe[-1].value
    assert list(history["run"]) == [1, 1, 1] and history["mean colour"].notna().all()


def test_the_live_charts_are_titled_and_labelled_with_the_baselines_as_lines(data_dir):
    at = run_playground(page("playground").run())
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    layouts = [f["layout"] for f in figures]
    assert [l["title"]["text"] for l in layouts] == ["PSNR vs x over the run", "PSNR vs T(x) (the paper's measure)",
                                                    "Gradient-matching loss"]
    assert all(l["yaxis"]["title"]["text"] and l["xaxis"]["title"]["text"] == "iteration" for l in layouts)
    assert all(l["xaxis"]["tickformat"] == "d" and l["xaxis"]["range"] == [0, 4] for l in layouts)  # no "2.000000"
    assert layouts[0]["legend"]["orientation"] == "h"  # below the plot, not cut at its side
    lines = [shape["y0"] for shape in layouts[0]["shapes"]]
    run = at.session_state["last_run"]
    assert lines == pytest.approx([run["mean_colour"], run["grey"]])


def test_the_reproduce_snippet_gives_the_apps_numbers(data_dir, capsys):
    at = page("playground").run()
    at.radio(key="count").set_value(2).run()
    run_playground(at)
    snippet = at.code[0].value
    assert "compare(model, x, y, settings, iterations=4, seed=0)" in snippet
    assert at.code[1].value.splitlines()[1] == ("ats attack --data cifar100 --indices 0 --model lenet --policy 3-1-7 "
                                                "--defense none --attack idlg --iterations 4 --seed 0")
    capsys.readouterr()
    exec(compile(snippet, "reproduce.py", "exec"), {})  # the snippet as a user would paste it
    printed = [float(line.split("PSNR vs x ")[1].split(" dB")[0]) for line in capsys.readouterr().out.splitlines()]
    assert printed == pytest.approx([r.psnr_x for r in at.session_state["last_run"]["results"]], abs=1e-4)


def test_a_second_run_click_during_a_run_is_ignored_with_a_message(data_dir):
    at = run_playground(page("playground").run())
    assert at.session_state["run_token"] == 1 and len(at.session_state["runs"]) == 1
    at.session_state["asked"] = 0  # what the callback of a click queued during run 0 leaves: the old token
    at.run()
    assert not at.exception
    assert any("pressed again while the last run was going: ignored" in i.value for i in at.info)
    assert len(at.session_state["runs"]) == 1 and at.session_state["run_token"] == 1  # no second run
    assert at.button(key="run_1").label == "Run"
    run_playground(at)  # a click after the run is a run
    assert len(at.session_state["runs"]) == 2


def test_a_run_cut_short_is_kept_in_the_history_marked_stopped(data_dir):
    at = run_playground(page("playground").run())
    record = dict(at.session_state["last_run"], status="running", results=[None, None, None])
    record["latest"] = [dict(r, iteration=2) for r in record["latest"]]
    at.session_state["active_run"] = record  # what a run leaves when another page or image interrupts it
    at.run()
    assert not at.exception
    assert "The last run stopped at iteration 2 of 4" in at.warning[0].value
    assert at.session_state["runs"][-1]["status"] == "stopped at iteration 2 of 4"
    assert "active_run" not in at.session_state
    assert list(at.dataframe[-1].value["status"])[:3] == ["stopped at iteration 2 of 4"] * 3


def test_settings_survive_a_visit_to_another_page(data_dir):
    at = router().run()
    at.text_input(key="policy_1").input("43-18-18")
    at.selectbox(key="attack_2").set_value("ig")
    widget(at.multiselect, "Ops").set_value([3, 1])
    assert at.number_input(key="iterations").max >= 4800  # the paper's IG budget is offered (the slider stopped at 2000)
    at.number_input(key="iterations").set_value(4800).run()
    assert not at.exception
    at.switch_page("app_pages/about.py").run()
    at.switch_page("app_pages/playground.py").run()
    assert at.text_input(key="policy_1").value == "43-18-18"
    assert at.selectbox(key="attack_2").value == "ig"
    assert at.number_input(key="iterations").value == 4800
    assert widget(at.multiselect, "Ops").value == [3, 1]
    assert any("This will take about" in w.value and "iDLG on LeNet" in w.value for w in at.warning)


def test_the_op_builder_sets_a_settings_policy(data_dir):
    at = page("playground").run()
    widget(at.multiselect, "Ops").set_value([3, 1, 7])
    at.selectbox(key="ops_target").set_value(0)
    widget(at.button, "Use these ops").click().run()
    assert not at.exception
    assert at.text_input(key="policy_0").value == "3-1-7"
    assert any(c.value.startswith("T(x) with seed 0: translateX") for c in at.caption)


def test_malformed_policy_is_an_inline_error_and_run_waits(data_dir):
    at = page("playground").run()
    at.text_input(key="policy_1").input("3--1").run()
    assert not at.exception
    assert "Setting B" in at.error[0].value and "empty index" in at.error[0].value
    assert at.button(key="run_0").disabled and not at.metric
    assert at.title[0].value == "Attack playground"  # the rest of the page still works


def test_sample_photos_and_a_shipped_checkpoint_of_another_architecture(data_dir):
    at = page("playground").run()
    at.radio(key="source").set_value("samples").run()
    assert not at.exception and not at.error
    shipped = [o for o in at.selectbox(key="weights").options if o.endswith(".pt")]
    if not shipped:
        pytest.skip("no checkpoint shipped in ats/assets/models/ yet")
    at.selectbox(key="arch").set_value("convnet")
    at.selectbox(key="weights").set_value(shipped[0]).run()
    assert not at.exception
    assert "expected 'convnet'" in at.error[-1].value


def test_an_invalid_uploaded_checkpoint_is_named_by_its_file(data_dir):
    at = page("playground").run()
    at.selectbox(key="weights").set_value("upload").run()
    at.file_uploader(key="checkpoint").upload("mine.pt", b"not a checkpoint").run()
    assert not at.exception
    assert "'mine.pt'" in at.error[-1].value and "/tmp" not in at.error[-1].value


def test_uploaded_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "lenet.pt", models.build_model("lenet", 10),
                                  checkpoints.ModelMeta("lenet", "cifar10", 10, "none"))
    with pytest.raises(ValueError, match="expected 'convnet'"):
        checkpoints.load_checkpoint_bytes(path.read_bytes(), expect_arch="convnet")
    with pytest.raises(ValueError, match="10 classes"):
        checkpoints.load_checkpoint_bytes(path.read_bytes(), expect_arch="lenet", num_classes=100)
    with pytest.raises(ValueError, match="not a readable torch file"):
        checkpoints.load_checkpoint_bytes(b"not a checkpoint")


def test_scores_page_computes_the_policy_and_reference_points(data_dir):
    at = page("scores").run()
    assert not at.exception
    at.text_input[0].input("3-1-7")
    widget(at.slider, "Privacy images").set_value(1)
    widget(at.slider, "Accuracy windows").set_value(1)
    widget(at.slider, "Random reference").set_value(0)
    at.button[0].click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert "S_pri (lower = more private)" in labels
    passes = at.metric[labels.index("passes the paper's threshold -85")].value
    why = [c.value for c in at.caption if c.value.startswith("**Why no:**")]
    assert bool(why) == (passes == "no")  # a "no" for the paper's own policy is explained
    assert all("ResNet20-4" in w and "per image" in w for w in why)
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["3-1-7", "none", "43-18-18", "3-1-7+43-18-18"]
    assert table["S_pri"].between(-1, 1).all()
    assert len(at.get("plotly_chart")) == 2


def test_scores_page_refuses_a_malformed_policy(data_dir):
    at = page("scores").run()
    at.text_input[0].input("3-1-x")
    at.button[0].click().run()
    assert not at.exception
    assert "not an index" in at.error[0].value and not at.metric


def tiny_database(path: Path) -> Path:
    """Four scored policies: 0-0 is the most private but below the threshold, the rest pass."""
    from ats.scores import ScoreConfig

    with Store.open(path) as store:
        for policy, privacy, accuracy in (("3-1-7", 0.2, -80.0), ("43-18-18", 0.3, -70.0),
                                          ("5", 0.5, -60.0), ("0-0", 0.1, -120.0)):
            store.put_score(ScoreRow(policy, ScoreConfig.smoke().definition(), "abc", 0, privacy, accuracy,
                                     accuracy / 100, (privacy, privacy), 2, 0.1))
    return path


def test_search_explorer_opens_a_database_and_sends_a_policy_to_the_playground(data_dir, tmp_path):
    db = tiny_database(tmp_path / "results.db")
    at = router().run()
    at.switch_page("app_pages/search_explorer.py").run()
    assert at.title[0].value == "Search explorer"
    at.radio(key="search_source").set_value("path").run()
    widget(at.text_input, "Results database").input(str(db)).run()
    assert not at.exception and not at.error
    values = {m.label: m.value for m in at.metric}
    assert values["policies"] == "4" and values["pass the threshold"] == "3" and values["best"] == "3-1-7"
    assert "**Hybrid of disjoint top policies:** `3-1-7+43-18-18`" in [m.value for m in at.markdown]  # whole
    assert at.selectbox(key="search_group").options[0].startswith(
        "resnet20 · S_pri on 4 images × 21 points · S_acc on 2 windows of 100")
    traces = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    front = [t for t in traces if t["name"].startswith("Pareto front")][0]
    assert plotted(front["x"]) == [0.2, 0.3, 0.5] and min(plotted(front["y"])) >= -85  # by S_pri, no rejected 0-0
    widget(at.selectbox, "Or choose a policy").set_value("43-18-18")
    widget(at.button, "Open in the playground").click().run()
    assert not at.exception
    assert at.title[0].value == "Attack playground"
    assert at.text_input(key="policy_0").value == "43-18-18"


def test_search_explorer_refuses_a_file_that_is_not_a_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "notes.db"
    bad.write_text("hello")
    at = page("search_explorer").run()
    at.radio(key="search_source").set_value("path").run()
    assert not at.error and "There is no results.db in this folder yet" in at.info[0].value  # not a red error
    at.radio(key="search_source").set_value("upload").run()
    at.file_uploader[0].upload("notes.db", b"hello").run()
    assert "notes.db is not a results database" in at.error[0].value and "--db" not in at.error[0].value
    at.radio(key="search_source").set_value("path").run()
    widget(at.text_input, "Results database").input(str(bad)).run()
    assert not at.exception
    assert "not a results database" in at.error[0].value
    widget(at.text_input, "Results database").input(str(tmp_path / "missing.db")).run()
    assert "does not exist" in at.error[0].value


def plotted(array) -> list:
    """A plotly figure's array from its JSON: a list, or plotly's base64 `bdata` encoding of one."""
    if isinstance(array, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def frame(at, column: str):
    """The first dataframe shown with `column`."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no dataframe with {column!r} among {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def test_benchmark_page_without_and_with_a_table(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    at = page("benchmark").run()
    assert not at.exception
    assert "Not computed yet" in at.info[0].value
    (tmp_path / "benchmark.csv").write_text(
        "policy,defense,psnr_tx_mean,psnr_tx_std,psnr_x_mean,ssim_tx_mean,accuracy\n"
        "none,none,14.1,1.2,14.1,0.5,0.70\n3-1-7,none,8.3,0.9,7.9,0.1,0.69\n")
    at = page("benchmark").run()
    assert not at.exception and not at.info and not at.error
    assert list(at.dataframe[0].value["policy"]) == ["none", "3-1-7"]  # no baselines to show first
    assert list(at.dataframe[0].value["accuracy (%)"]) == [70.0, 69.0]
    assert len(at.get("plotly_chart")) == 2
    trade = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert sorted(y for t in trade["data"] for y in plotted(t["y"])) == [69.0, 70.0]  # percent, as the table's column
    assert trade["layout"]["yaxis"]["title"]["text"] == "test accuracy (%)" and trade["layout"]["yaxis"]["range"][0] == 0
    assert all(t["mode"] == "markers" for t in trade["data"])  # policies by symbol, no labels piled up
    assert "paper PSNR" not in at.dataframe[0].value
    assert "evidence columns stage, psnr_x_median" in at.warning[0].value  # says what it lacks
    assert any("no baselines" in c.value for c in at.caption)
    assert any(c.value.startswith("No reconstruction grid") for c in at.caption)
    (tmp_path / "benchmark.csv").write_text("policy,psnr\nnone,3\n")
    at = page("benchmark").run()
    assert not at.exception
    assert "lacks the columns defense" in at.error[0].value
    assert at.error[0].value.count("defense") == 1  # named once


def test_benchmark_page_reads_a_table_of_an_older_version(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmark.csv").write_text(  # the column names before "_x"/"_tx"
        "study,policy,defense,psnr_mean,psnr_std,psnr_original_mean,ssim_mean,accuracy\n"
        "table,none,none,14.1,1.2,14.1,0.5,0.70\ntable,3-1-7,none,8.3,0.9,7.9,0.1,0.69\n"
        "aware,3-1-7,none,9.0,0.9,9.5,0.1,0.69\n")
    at = page("benchmark").run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value
    assert list(shown["PSNR vs x, mean"]) == [14.1, 7.9] and list(shown["PSNR vs T(x), mean"]) == [14.1, 8.3]
    aware = frame(at, "aware: PSNR vs x, mean")
    assert list(aware["plain: PSNR vs x, mean"]) == [7.9] and list(aware["aware: PSNR vs x, mean"]) == [9.5]


def evidence_csv(path: Path, rows: list[dict]) -> None:
    """A table as `report.write_csv` writes it: every column of `CSV_COLUMNS`, blank where not given."""
    import csv

    from ats.report import CSV_COLUMNS

    base = dict(attack="ig", arch="resnet20", images=4, iterations=10, failed=0, psnr_tx_mean=1.0, psnr_tx_std=0.1,
                psnr_x_mean=1.0, ssim_tx_mean=0.1, accuracy=0.3, baseline_grey_median=11.0,
                baseline_mean_colour_median=15.0, baseline_tx_median=100.0)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**base, **row})


def test_benchmark_page_shows_the_evidence_of_a_table(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)

    def interval(m: float) -> dict:
        return dict(psnr_x_median=m, psnr_x_ci_low=m - 1, psnr_x_ci_high=m + 1, psnr_x_aligned_median=m)

    evidence_csv(tmp_path / "benchmark.csv", [
        dict(study="table", policy="none", defense="none", stage=5, leaks=True, leak_margin=5.0, **interval(20.0)),
        dict(study="table", policy="3-1-7", defense="none", stage=5, leaks=False, leak_margin=-1.0, diff_median=-6.0,
             diff_ci_low=-7.0, diff_ci_high=-5.0, p_adjusted=0.0004, reference="table none/none", **interval(14.0)),
        dict(study="stages", policy="none", defense="none", stage=0, leaks=True, leak_margin=10.0, accuracy=0.01,
             **interval(25.0)),
        dict(study="regime", policy="none", defense="none", stage=0, arch="lenet", leaks=False, leak_margin=-2.0,
             **interval(13.0)),
    ])
    at = page("benchmark").run()
    assert not at.exception and not at.error and not at.warning
    assert at.subheader[0].value == "Does the undefended attack leak?"
    baselines = at.dataframe[0].value
    assert list(baselines["study"]) == ["table", "stages", "regime"] and list(baselines["mean colour"]) == [15.0] * 3
    assert list(baselines["leaks?"]) == ["yes (+5.0 dB)", "yes (+10.0 dB)", "no leakage measured"]
    assert list(baselines["PSNR vs x, median [95 % CI]"]) == ["20.0 [19.0, 21.0]", "25.0 [24.0, 26.0]",
                                                             "13.0 [12.0, 14.0]"]
    main = frame(at, "defense")
    assert list(main["policy"]) == ["none", "3-1-7"]
    assert list(main["Δ vs none [95 % CI]"]) == ["–", "-6.0 [-7.0, -5.0]"]
    assert list(main["p (Holm)"]) == ["–", "< 0.001"]
    assert list(main["leaks?"]) == ["yes (+5.0 dB)", "no leakage measured"]
    assert "Leakage over training" in [h.value for h in at.subheader]
    stages = [d.value for d in at.dataframe if "study" not in d.value and "defense" not in d.value][0]
    assert list(stages["stage (epochs)"]) == [0, 5] and list(stages["accuracy (%)"]) == [1.0, 30.0]
    assert len(at.get("plotly_chart")) == 3  # bars, trade-off, leakage over training


def test_benchmark_page_shows_dp_budgets_and_the_threat_study(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    evidence_csv(tmp_path / "benchmark.csv", [
        dict(study="table", policy="none", defense="none", threat="fedsgd", psnr_x_median=20.0),
        dict(study="table", policy="none", defense="dp-1-1.1", threat="fedsgd", psnr_x_median=5.0,
             epsilon_update=4.2391, epsilon_train=0.5912, delta=1e-5),
        dict(study="threat", policy="none", defense="none", threat="batch-4", psnr_x_median=16.0, psnr_x_ci_low=7.0,
             psnr_x_ci_high=25.0, diff_median=-4.4, diff_ci_low=-17.8, diff_ci_high=0.9, p_adjusted=0.25,
             leaks=False, leak_margin=1.0, reference="table none/none"),
        dict(study="threat", policy="none", defense="none", threat="fedavg-2-2", psnr_x_median=17.5),
    ])
    at = page("benchmark").run()
    assert not at.exception and not at.error and not at.warning
    main = frame(at, "ε one update")
    assert list(main["defense"]) == ["none", "dp-1-1.1"]
    assert list(main["ε one update"].fillna(-1)) == [-1, 4.24]
    assert list(main["ε its training"].fillna(-1)) == [-1, 0.59]
    assert any("privacy budget ε at δ = 1e-05" in c.value for c in at.caption)
    assert "Beyond one gradient: other threat models" in [h.value for h in at.subheader]
    threats = frame(at, "Δ vs FedSGD [95 % CI]")
    assert list(threats["threat"]) == ["batch-4", "fedavg-2-2"]
    assert list(threats["Δ vs FedSGD [95 % CI]"]) == ["-4.4 [-17.8, 0.9]", "–"]
    assert list(threats["p (Holm)"]) == ["0.250", "–"]


def test_benchmark_page_shows_a_partial_table_without_crashing(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmark.csv").write_text(  # medians but no intervals, leakage or paired tests
        "study,policy,defense,stage,psnr_x_median,psnr_tx_mean,psnr_tx_std,psnr_x_mean,ssim_tx_mean,accuracy,"
        "baseline_mean_colour_median,leaks\n"
        "table,none,none,2,9.0,9.0,1.0,9.0,0.1,0.5,15.0,\nstages,none,none,0,,,,,,0.01,15.0,\n")
    at = page("benchmark").run()
    assert not at.exception and not at.error
    assert "psnr_x_ci_low" in at.warning[0].value and "p_adjusted" in at.warning[0].value
    assert list(at.dataframe[0].value["mean colour"]) == [15.0, 15.0]
    assert list(frame(at, "defense")["policy"]) == ["none"]


def test_benchmark_page_runs_a_small_benchmark_and_shows_it(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    at = page("benchmark").run()
    widget(at.text_input, "Policies").set_value("none,3-1-7")
    widget(at.slider, "Attack iterations").set_value(2)
    widget(at.slider, "Attack-set images").set_value(1)
    at.button[0].click().run()
    assert not at.exception and not at.error and not at.warning
    assert (tmp_path / "runs" / "app-benchmark" / "benchmark.csv").is_file()
    baselines = at.dataframe[0].value
    assert set(baselines["study"]) == {"table", "stages", "regime"}
    assert set(baselines["leaks?"]) == {"no leakage measured"}  # one image proves nothing
    shown = frame(at, "defense")
    assert list(zip(shown["policy"], shown["defense"])) == [("none", "none"), ("none", "prune-70"),
                                                             ("3-1-7", "none"), ("3-1-7", "prune-70")]
    headings = [h.value for h in at.subheader]
    assert "Leakage over training" in headings and any("knows the policy" in h for h in headings)
    assert len(at.get("image")) == 2  # the table's and the regime's grids
    assert (tmp_path / "runs" / "app-benchmark" / "grid-table.png").is_file()
    widget(at.text_input, "Policies").set_value("3--1")
    at.button[0].click().run()
    assert "3--1" in at.error[0].value  # a malformed policy: an inline message, the table stays
    assert len(at.dataframe) >= 1


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No CIFAR-100 anywhere ats looks, and no cached answer from a test that had it."""
    import streamlit as st

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ATS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def test_without_data_every_page_says_what_is_missing_before_a_click(no_data):
    at = page("playground").run()
    assert not at.exception and not at.error
    assert at.radio(key="source").options == ["Sample photos", "Upload an image"]
    assert any("CIFAR-100 attack set** is not on this machine" in c.value and "ATS_DATA_DIR" in c.value
               for c in at.caption)
    at = page("scores").run()
    assert "ATS_DATA_DIR" in at.info[0].value and widget(at.button, "Compute scores").disabled
    at = page("search_explorer").run()
    at.radio(key="search_source").set_value("run").run()
    assert any("ATS_DATA_DIR" in i.value for i in at.info) and widget(at.button, "Run search").disabled
    at = page("benchmark").run()
    assert any("ATS_DATA_DIR" in i.value for i in at.info) and widget(at.button, "Run benchmark").disabled


def test_about_page_explains_and_cites():
    at = page("about").run()
    assert not at.exception
    assert len(at.get("graphviz_chart")) == 2
    text = " ".join(m.value for m in at.markdown)
    for reference in ("CVPR 2021", "Deep Leakage from Gradients", "iDLG", "Inverting Gradients", "ReScience"):
        assert reference in text


# --- the threat panel and DP-SGD (issue 14) -------------------------------------------------------

def test_playground_fedavg_threat_attacks_the_clients_images_jointly(data_dir, capsys):
    at = page("playground").run()
    at.radio(key="threat_kind").set_value("fedavg").run()
    at.number_input(key="threat_epochs").set_value(1)
    at.number_input(key="threat_batches").set_value(2).run()
    assert not at.exception and not at.error
    assert at.multiselect(key="client_cifar100_2").value == [1]  # the next image of the source
    assert any("1 client(s) of 2" in c.value for c in at.caption)
    assert any("FedSGD only" in c.value for c in at.caption)  # one setting under an aggregated threat
    assert any(m.value.startswith("**Before you run:** fedavg-1-2") for m in at.markdown)
    run_playground(at, iterations=2)
    assert "This run: fedavg-1-2" in [h.value for h in at.subheader]
    run = at.session_state["last_run"]
    assert run["threat"] == "fedavg-1-2" and run["indices"] == [0, 1] and len(run["results"]) == 2
    table = frame(at, "reading")
    assert len(table) == 2 and table["PSNR vs x"].notna().all() and table["mean colour"].notna().all()
    median = next(m for m in at.metric if m.label == "median PSNR vs x")
    assert float(median.value.split()[0]) == pytest.approx(table["PSNR vs x"].mean(), abs=0.006)  # of two: their mean
    assert any("fedavg-1-2" in s for s in at.dataframe[-1].value["setting"])  # the kept runs name it
    snippet = at.code[0].value
    assert "attack_threat(model, x, y, 'fedavg-1-2', config" in snippet
    assert "--indices 0,1 --threat fedavg-1-2" in at.code[1].value
    capsys.readouterr()
    exec(compile(snippet, "reproduce.py", "exec"), {})  # the library's call gives the page's numbers
    printed = [float(line.split("PSNR vs x ")[1].split(" dB")[0]) for line in capsys.readouterr().out.splitlines()]
    assert printed == pytest.approx([r.psnr_x for r in run["results"]], abs=1e-4)


def test_playground_dp_sgd_defense_shows_its_epsilon(data_dir):
    from ats.privacy import noise_for_epsilon, update_epsilon

    at = page("playground").run()
    at.radio(key="count").set_value(1).run()
    at.selectbox(key="defense_0").set_value("dp").run()
    at.number_input(key="dp_clip_0").set_value(1.0)
    at.number_input(key="dp_sigma_0").set_value(1.1).run()
    assert not at.exception and not at.error
    shown = f"ε = {update_epsilon(1.1):.3g}** at δ = 1e-5"
    assert any("`dp-1-1.1`" in c.value and shown in c.value for c in at.caption)
    at.selectbox(key="dp_by_0").set_value("target ε").run()
    at.number_input(key="dp_epsilon_0").set_value(8.0).run()
    sigma = float(f"{noise_for_epsilon(8.0):.4g}")
    assert any(f"σ = {sigma:g} for ε = 8" in c.value for c in at.caption)
    assert any(f"`dp-1-{sigma:g}`" in c.value and f"ε = {update_epsilon(sigma):.3g}" in c.value for c in at.caption)
    run_playground(at, iterations=2)
    assert at.session_state["last_run"]["settings"][0].defense == f"dp-1-{sigma:g}"
    assert any(c.value.startswith("DP-SGD: **ε =") for c in at.caption)  # beside the result too
    guesses = [c.value for c in at.caption if "trivial guesses vs x" in c.value]
    assert guesses and all("T(x) is x here" in g and "100.0 dB" not in g for g in guesses)  # no policy: no guess


def test_playground_bad_threat_combinations_are_error_lines(data_dir):
    at = page("playground").run()
    at.radio(key="threat_kind").set_value("batch").run()
    at.number_input(key="threat_batch").set_value(4).run()
    at.multiselect(key="client_cifar100_4").set_value([1]).run()  # two images for batch-4
    assert not at.exception
    assert "do not split into clients of 4" in at.error[0].value and "Pick 4 images" in at.error[0].value
    assert at.button(key="run_0").disabled
    at.radio(key="threat_kind").set_value("fedavg").run()  # FedAvg-1-2 under DP-SGD: client_update refuses it
    at.selectbox(key="defense_0").set_value("dp").run()
    assert not at.exception and not at.error
    run_playground(at, iterations=2)
    assert "This run cannot go" in at.error[0].value and "no DP-SGD" in at.error[0].value
    assert at.button(key="run_1").label == "Run" and not at.button(key="run_1").disabled

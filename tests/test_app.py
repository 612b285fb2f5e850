"""The Streamlit app, headless through `streamlit.testing.v1.AppTest`, at the smoke budget."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ats import checkpoints, models
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


def test_run_an_attack_at_smoke_budget_and_keep_it_in_the_history(data_dir):
    at = page("playground").run()
    assert len(at.get("image")) >= 12 + 50  # the image gallery and the op gallery
    widget(at.slider, "Iterations").set_value(10)
    widget(at.slider, "Show a frame").set_value(5)
    at.button[0].click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert "PSNR vs original" in labels and "Aligned PSNR vs original" in labels
    assert "vs its mean colour" in at.metric[labels.index("PSNR vs original")].delta  # beside its baseline
    assert any("mean colour" in c.value and "flat grey" in c.value for c in at.caption)
    assert at.metric[labels.index("Label recovered")].value == "yes"
    assert at.subheader[-1].value == "Recent runs"
    assert at.session_state["runs"][-1]["policy"] == "none"
    history = at.dataframe[-1].value
    assert list(history["policy"]) == ["none"] and history["PSNR vs x"].notna().all()
    assert history["mean colour"].notna().all()


def test_picking_ops_changes_the_policy(data_dir):
    at = page("playground").run()
    widget(at.multiselect, "Ops").set_value([3, 1, 7]).run()
    assert not at.exception
    assert any(c.value.startswith("**3-1-7**: translateX") for c in at.caption)
    at.radio(key="policy_mode").set_value("type").run()
    at.text_input(key="policy_text").input("3-1-7+43-18-18").run()
    assert not at.error
    assert any(c.value.startswith("**3-1-7+43-18-18**") for c in at.caption)


def test_malformed_policy_is_an_inline_error(data_dir):
    at = page("playground").run()
    at.radio(key="policy_mode").set_value("type").run()
    at.text_input(key="policy_text").input("3--1").run()
    assert not at.exception
    assert "empty index" in at.error[0].value
    widget(at.slider, "Iterations").set_value(10)
    at.button[0].click().run()
    assert not at.exception
    assert "empty index" in at.error[-1].value and not at.metric
    assert at.title[0].value == "Attack playground"  # the rest of the page still works


def test_sample_photos_and_a_shipped_checkpoint_of_another_architecture(data_dir):
    at = page("playground").run()
    at.radio(key="source").set_value("samples").run()
    assert not at.exception and not at.error
    shipped = [o for o in widget(at.selectbox, "Weights").options if o.endswith(".pt")]
    if not shipped:
        pytest.skip("no checkpoint shipped in ats/assets/models/ yet")
    widget(at.selectbox, "Model").set_value("convnet")
    widget(at.selectbox, "Weights").set_value(shipped[0])
    at.button[0].click().run()
    assert not at.exception
    assert "expected 'convnet'" in at.error[-1].value


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
    with Store.open(path) as store:
        for policy, privacy, accuracy in (("3-1-7", 0.2, -80.0), ("43-18-18", 0.3, -70.0),
                                          ("5", 0.5, -60.0), ("0-0", 0.1, -120.0)):
            store.put_score(ScoreRow(policy, "test-definition", "abc", 0, privacy, accuracy, accuracy / 100,
                                     (privacy, privacy), 2, 0.1))
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
    assert len(at.get("plotly_chart")) == 1
    widget(at.selectbox, "Or choose a policy").set_value("43-18-18")
    widget(at.button, "Open in the playground").click().run()
    assert not at.exception
    assert at.title[0].value == "Attack playground"
    assert at.text_input(key="policy_text").value == "43-18-18"


def test_search_explorer_refuses_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("hello")
    at = page("search_explorer").run()
    at.radio(key="search_source").set_value("path").run()
    widget(at.text_input, "Results database").input(str(bad)).run()
    assert not at.exception
    assert "not a results database" in at.error[0].value
    widget(at.text_input, "Results database").input(str(tmp_path / "missing.db")).run()
    assert "does not exist" in at.error[0].value


def frame(at, column: str):
    """The first dataframe shown with `column`."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no dataframe with {column!r} among {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def test_benchmark_page_without_and_with_a_table(tmp_path, monkeypatch):
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
    assert "evidence columns stage, psnr_x_median" in at.warning[0].value  # says what it lacks
    assert any("no baselines" in c.value for c in at.caption)
    assert any(c.value.startswith("No reconstruction grid") for c in at.caption)
    (tmp_path / "benchmark.csv").write_text("policy,psnr\nnone,3\n")
    at = page("benchmark").run()
    assert not at.exception
    assert "lacks the columns defense" in at.error[0].value


def test_benchmark_page_reads_a_table_of_an_older_version(tmp_path, monkeypatch):
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


def test_benchmark_page_shows_the_evidence_of_a_table(tmp_path, monkeypatch):
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


def test_benchmark_page_shows_a_partial_table_without_crashing(tmp_path, monkeypatch):
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


def test_about_page_explains_and_cites():
    at = page("about").run()
    assert not at.exception
    assert len(at.get("graphviz_chart")) == 2
    text = " ".join(m.value for m in at.markdown)
    for reference in ("CVPR 2021", "Deep Leakage from Gradients", "iDLG", "Inverting Gradients", "ReScience"):
        assert reference in text

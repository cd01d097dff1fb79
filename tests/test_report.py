"""The HTML report: self-contained, escaped, every figure embedded, written atomically."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from poisonlab.errors import PoisonlabError
from poisonlab.report import DetectorView, figure_to_png, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _view(name: str, rng: np.random.Generator, *, channels: int, size: int, poisoned=True) -> DetectorView:
    n = 200
    scores = rng.normal(0.0, 1.0, n)
    targeted = np.zeros(n, bool)
    random_flip = np.zeros(n, bool)
    if poisoned:
        targeted[:12] = True
        random_flip[12:20] = True
        scores[:20] += 4.0
    clean = ~(targeted | random_flip)
    order = np.argsort(-scores)[:10]
    return DetectorView(
        name=name,
        scores=scores,
        groups={"clean": clean, "label_flip_targeted": targeted, "label_flip_random": random_flip},
        threshold=2.0,
        top_images=rng.random((10, channels, size, size)),
        top_captions=[f"#{i} given 9 / orig 3 ({'poison' if not clean[i] else 'clean'})" for i in order],
        top_poisoned=~clean[order],
    )


@pytest.fixture
def results() -> dict:
    return {
        "name": "flip<script>alert(1)</script>",
        "created": "2025-01-02T03:04:05",
        "trials": 3,
        "config": {"seed": 0, "attack": {"name": "label_flip", "rate": 0.1}, "note": "<b>bold</b>"},
        "metrics": {
            "victim.clean_accuracy": 0.951234,
            "attack.success_rate": 0.5,
            "attack.n_poisoned": 20.0,
            "twin.clean_accuracy": 1.0,
            "detection.tracin_self.auroc": 0.987654,
            "detection.tracin_self.label_flip_targeted.auroc": 0.912345,
        },
        "metrics_std": {"victim.clean_accuracy": 0.0123},
        "timings": {"train": 12.5, "detect": 125.0},
        "versions": {"torch": "2.13.0", "numpy": "2.0"},
        "notes": ["a note & more"],
    }


@pytest.fixture
def views() -> list[DetectorView]:
    rng = np.random.default_rng(0)
    return [_view("tracin_self", rng, channels=1, size=8), _view("loss", rng, channels=3, size=32)]


HISTORY = [
    {
        "epoch": e,
        "lr": 0.05 / e,
        "loss": 1.0 / e,
        "train_accuracy": 0.6 + 0.05 * e,
        "test_accuracy": 0.55 + 0.05 * e,
    }
    for e in range(1, 6)
]


def _extra_png() -> bytes:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    return figure_to_png(fig)


def test_render_is_self_contained_and_complete(results, views):
    out = render_report(results, views, history=HISTORY, extra_figures={"Extra <plot>": _extra_png()})
    assert out.startswith("<!DOCTYPE html>")
    assert out.rstrip().endswith("</html>")
    for metric in results["metrics"]:
        assert metric in out
    assert "0.9512" in out and "0.9877" in out and "0.9123" in out and "± 0.012" in out
    assert ">0.5000<" in out and ">1.000<" in out and ">20<" in out
    # groups in a fixed order: victim, twin, attack, detection
    positions = [out.index(f"<th colspan='3'>{g}</th>") for g in ("victim", "twin", "attack", "detection")]
    assert positions == sorted(positions)
    for heading in ("victim", "attack", "detection"):
        assert f"<th colspan='3'>{heading}</th>" in out
    # 2 detectors x (histogram, ROC, image grid) + history + one extra figure
    images = DATA_URI.findall(out)
    assert len(images) == out.count("data:image/png;base64,") == 2 * 3 + 1 + 1
    for data in images:
        assert base64.b64decode(data).startswith(PNG_SIGNATURE)
    assert 'src="http' not in out and "href='http" not in out and 'href="http' not in out
    assert "<link" not in out and "<script" not in out
    assert "flip&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;b&gt;bold&lt;/b&gt;" in out and "Extra &lt;plot&gt;" in out and "a note &amp; more" in out
    assert "2025-01-02T03:04:05" in out
    assert "label_flip_targeted" in out and "tracin_self" in out
    assert "torch" in out and "2.13.0" in out and "12.5 s" in out
    assert "rate: 0.1" in out  # the config, as YAML


def test_detector_without_poison_renders_with_note(results):
    view = _view("clean_only", np.random.default_rng(1), channels=1, size=8, poisoned=False)
    out = render_report(results, [view])
    assert "no ROC: there are no poisoned rows" in out
    assert out.count("data:image/png;base64,") == 2  # histogram and image grid, no ROC


def test_detector_without_clean_rows_or_images(results):
    rng = np.random.default_rng(2)
    view = DetectorView(
        name="all_poison",
        scores=rng.random(30),
        groups={"clean": np.zeros(30, bool), "p": np.ones(30, bool)},
        threshold=None,
        top_images=np.zeros((0, 1, 8, 8)),
        top_captions=[],
        top_poisoned=np.zeros(0, bool),
    )
    out = render_report({"name": "x", "metrics": {}}, [view])
    assert "no ROC: there are no clean rows" in out and "No images given" in out
    assert out.count("data:image/png;base64,") == 1


def test_awkward_scores_still_render():
    rng = np.random.default_rng(3)
    scores = 10.0 ** rng.uniform(-6, 3, 100)  # heavy-tailed, positive: log-scale histogram
    scores[0], scores[1], scores[2] = np.nan, np.inf, -np.inf
    poison = np.zeros(100, bool)
    poison[:10] = True
    view = DetectorView(
        "heavy$tail",
        scores,
        {"clean": ~poison, "_hidden": poison},
        1.0,
        rng.random((3, 3, 4, 4)),
        ["a", "b $x$", "c"],
        np.array([1, 0, 1], bool),
    )
    out = render_report({"name": "awkward", "metrics": {"detection.x.auroc": float("nan")}}, [view])
    assert out.count("data:image/png;base64,") == 3
    assert "<td class='num'>–</td>" in out  # a NaN metric shows as a dash
    assert "heavy$tail" in out and "_hidden" in out


def test_constant_scores_render():
    view = DetectorView(
        "flat", np.ones(50), {"clean": np.ones(50, bool)}, 1.0, np.zeros((0, 1, 2, 2)), [], np.zeros(0, bool)
    )
    out = render_report({"name": "flat"}, [view])
    assert out.count("data:image/png;base64,") == 1
    assert "no ROC" in out


def test_bad_view_shapes_raise():
    with pytest.raises(PoisonlabError, match="mask"):
        DetectorView("d", np.zeros(5), {"clean": np.ones(4, bool)}, None, np.zeros((0, 1, 2, 2)), [], [])
    with pytest.raises(PoisonlabError, match="top_images"):
        DetectorView("d", np.zeros(5), {}, None, np.zeros((2, 2, 4, 4)), ["a", "b"], [True, False])
    with pytest.raises(PoisonlabError, match="captions"):
        DetectorView("d", np.zeros(5), {}, None, np.zeros((2, 1, 4, 4)), ["a"], [True, False])


def test_write_report_is_atomic(tmp_path, results, views):
    target = tmp_path / "out" / "report.html"
    write_report(target, results, views[:1], history=HISTORY)
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    write_report(target, results, [])  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    assert target.read_text(encoding="utf-8").count("data:image/png;base64,") == 0


def test_write_report_leaves_nothing_when_rendering_fails(tmp_path, results):
    with pytest.raises(AttributeError):
        write_report(tmp_path / "r.html", results, [object()])  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []


def test_figure_to_png():
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().imshow(np.eye(3), cmap="gray")
    assert figure_to_png(fig).startswith(PNG_SIGNATURE)


def test_the_page_opens_with_a_headline_of_net_effects_flag_rates_and_oracles():
    results = {
        "name": "h",
        "trials": 4,
        "metrics": {
            "victim.clean_accuracy": 0.9,
            "twin.clean_accuracy": 0.92,
            "attack.bd.success_rate": 0.95,
            "attack.bd.twin_success_rate": 0.05,
            "attack.bd.net_success_rate": 0.9,
            "detection.knn.auroc": 0.987,
            "detection.knn.recall_at_1pct": 0.2,
            "detection.knn.precision_at_1pct": 1.0,
            "detection.knn.recall_at_5pct": 0.6,
            "detection.knn.precision_at_5pct": 0.6,
            "detection.knn.recall": 0.99,
            "detection.knn.flagged_fraction": 0.31,
            "detection.knn.recall_at_budget": 0.8,
            "defense.fp.attack_success_before": 0.95,
            "defense.fp.attack_success": 0.02,
            "defense.fp.net_attack_success": 0.01,
            "defense.fp.clean_accuracy_before": 0.9,
            "defense.fp.clean_accuracy": 0.88,
            "strip.far": 0.03,
            "strip.frr": 0.01,
            "strip.auroc": 0.99,
            "purification.mendata.clean_accuracy": 0.87,
            "purification.mendata.bd.success_rate": 0.04,
            "purification.mendata.bd.net_success_rate": -0.01,
        },  # fmt: skip
        "metrics_se": {"attack.bd.net_success_rate": 0.05},
        "oracle_metrics": ["defense.fp.attack_success", "defense.fp.net_attack_success"],
    }
    html = render_report(results, [])
    headline = html[html.index("<section id='headline'>") : html.index("<section id='metrics'>")]
    assert html.index("id='headline'") < html.index("id='metrics'")  # first, before the full table
    text = re.sub(r"<[^>]+>", " ", headline)
    assert re.search(r"bd\s+95\.0\s+5\.0\s+\+90\.0 ± 5\.0", text)  # victim, twin, net with its SE
    assert "recall @1%" in text and "20.0" in text and "0.987" in text and "31.0" in text
    assert text.count("oracle") == 2  # the trigger-aware defense numbers
    assert "strip" in text and "3.0" in text and "mendata / bd" in text and "-1.0" in text
    assert "Headline" not in render_report({"name": "x", "metrics": {"a.b": 1.0}}, [])

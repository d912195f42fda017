"""Charts readable at 40 rounds: a 40-round, 4-hospital study's SVGs have at most about ten round
ticks, text of 10 pt or more kept as text, one colour and marker per hospital and a line style per
metric (no two lines drawn alike), a legend of hospitals and metrics, markers on a few points only;
the study page has the same numbers as a table, scoped like the charts."""

from __future__ import annotations

import re

import pytest

from consortia.services import hospital_create
from studies import services
from studies.models import PrivacySpend, Round, RoundReport, Study, TrainingJob

pytestmark = pytest.mark.django_db
ROUNDS = 40


@pytest.fixture
def long_study(world):
    w = world
    hs = [w.h1, w.h2, hospital_create(consortium=w.c1, name="Delta Hospital"),
          hospital_create(consortium=w.c1, name="Epsilon Hospital")]
    s = services.study_create(consortium=w.c1, name="Forty rounds", hospitals=hs,
                              schema={"task": "binary_classification", "features": [{"name": "age", "type": "float"}],
                                      "label": {"name": "outcome", "type": "binary"}},
                              model_spec={"type": "logistic_regression"}, rounds=ROUNDS, local_epochs=1, batch_size=16,
                              learning_rate=0.1, privacy={"epsilon": 2.0, "delta": 1e-5, "clip_norm": 1.0},
                              encryption={"codec": "bfv-packed-v1"}, quorum=2, round_deadline_s=60, seed=1)
    services.study_open_recruitment(study=s, actor="test")
    Study.objects.filter(pk=s.pk).update(status=Study.Status.RUNNING)
    rounds = Round.objects.bulk_create([Round(study=s, number=n, status=Round.Status.DONE) for n in range(1, ROUNDS + 1)])
    jobs = TrainingJob.objects.bulk_create([TrainingJob(round=r, hospital=h, status=TrainingJob.Status.UPLOADED)
                                            for r in rounds for h in hs])
    # Every hospital spends the same (equal data sizes): the lines coincide and must still show.
    PrivacySpend.objects.bulk_create([PrivacySpend(job=j, epsilon=0.05 * j.round.number, delta=1e-5,
                                                   noise_multiplier=1.1, sample_rate=0.01, steps=10, clip_norm=1.0,
                                                   accountant="rdp", accountant_version="1") for j in jobs])
    RoundReport.objects.bulk_create([
        RoundReport(round=r, hospital=h, n_test=100, model_sha256=f"{r.number:064x}",
                    metrics={"auc": 0.6 + 0.005 * r.number + 0.01 * i, "accuracy": 0.55 + 0.004 * r.number})
        for r in rounds for i, h in enumerate(hs)])
    return s, hs


def _svg(client, url) -> str:
    r = client.get(url)
    assert r.status_code == 200 and r["Content-Type"] == "image/svg+xml"
    return r.content.decode()


def _data_lines(svg: str) -> list[tuple[str, str]]:
    """(stroke colour, dash pattern) of every drawn series (grid lines and axis ticks left out)."""
    out = []
    for style in re.findall(r'<path d="M [^"]+"[^>]*clip-path="[^"]+" style="([^"]+)"', svg):
        if "stroke-opacity: 0.3" in style:      # the grid
            continue
        stroke = re.search(r"stroke: (#[0-9a-f]{6})", style).group(1)
        dash = re.search(r"stroke-dasharray: ([^;]+)", style)
        out.append((stroke, dash.group(1).strip() if dash else "solid"))
    return out


def _check_readable(svg: str) -> None:
    sizes = {float(x) for x in re.findall(r"font-size: (\d+(?:\.\d+)?)px", svg)}
    assert sizes and min(sizes) >= 10, sizes                # text stays text, at 10 pt or more
    ticks = re.findall(r'<g id="xtick_\d+">', svg)
    assert 4 <= len(ticks) <= 11, len(ticks)                # not 40 crowded labels


def test_the_metrics_chart_at_40_rounds(long_study, client, world):
    s, hs = long_study
    client.force_login(world.users["cadmin"])
    svg = _svg(client, f"/studies/{s.pk}/charts/metrics.svg")
    _check_readable(svg)
    lines = _data_lines(svg)
    drawn = lines[:8]                                       # 4 hospitals x (AUC, accuracy), then the legend's
    assert len(set(drawn)) == 8, drawn                      # no two series drawn alike
    assert len({c for c, _ in drawn}) == 4 and len({d for _, d in drawn}) == 2
    legend = svg.split('<g id="legend_1">', 1)[1]
    labels = re.findall(r"<text[^>]*>([^<]+)</text>", legend)
    assert labels == ["Alpha Hospital", "Beta Hospital", "Delta Hospital", "Epsilon Hospital", "AUC", "accuracy"]
    # Markers on a few points per line, not on all 40.
    per_line = [len(re.findall(r"<use ", g)) for g in re.split(r'<g id="line2d_\d+">', svg.split('<g id="legend_1">')[0])
                if 'clip-path' in g and "<use " in g]
    assert per_line and max(per_line) <= 11, per_line


def test_the_privacy_chart_shows_every_hospital_when_their_spends_coincide(long_study, client, world):
    s, hs = long_study
    client.force_login(world.users["auditor"])
    svg = _svg(client, f"/studies/{s.pk}/charts/privacy.svg")
    _check_readable(svg)
    plot = svg.split('<g id="legend_1">', 1)[0]
    # Each hospital's markers sit on other rounds than the others': their positions differ.
    marker_xs = []
    for g in re.split(r'<g id="line2d_\d+">', plot):
        xs = re.findall(r'<use [^>]*x="([0-9.]+)"', g)
        if xs and "clip-path" in g:
            marker_xs.append(frozenset(xs))
    assert len(marker_xs) == 4 and len(set(marker_xs)) == 4
    assert all(len(x) <= 11 for x in marker_xs)
    legend = re.findall(r"<text[^>]*>([^<]+)</text>", svg.split('<g id="legend_1">', 1)[1])
    assert [x for x in legend if "ε" not in x] == sorted(h.name for h in hs)
    assert "Alpha Hospital's cap ε=2" in legend and "study budget ε=2" in legend


def test_the_study_page_has_the_charts_numbers_as_a_table(long_study, client, world):
    s, hs = long_study
    client.force_login(world.users["cadmin"])
    html = client.get(f"/studies/{s.pk}/").content.decode()
    table = html.split('id="results-table"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    assert len(re.findall(r'<th scope="row">\d+</th>', body)) == ROUNDS
    assert re.findall(r'<th scope="colgroup"[^>]*>([^<]+)</th>', table) == sorted(h.name for h in hs)
    last = re.findall(r"<tr>.*?</tr>", body, re.S)[-1]
    assert '<th scope="row">40</th>' in last and "0.800" in last and "2.000" in last   # round 40: auc, ε
    assert "40 rounds" in html and "the same numbers are in the table" in html
    # A hospital admin's table has its own hospital only, like its charts.
    client.force_login(world.users["hadmin1"])
    table = client.get(f"/studies/{s.pk}/").content.decode().split('id="results-table"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<th scope="colgroup"[^>]*>([^<]+)</th>', table) == ["Alpha Hospital"]

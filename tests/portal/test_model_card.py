"""The model card is for clinicians and the same for every viewer: intended use, the features in
order with the preprocessing the released file carries, each hospital's score on its own test
split, limitations, the decision threshold, the privacy guarantee in words, a snippet that scores a
CSV with the released file (run here), and the encryption internals in an appendix."""

from __future__ import annotations

import hashlib
import html as htmlmod
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from django.conf import settings

from studies import services
from studies.models import FinalModel, PrivacySpend, Round, RoundReport, Study, TrainingJob

pytestmark = pytest.mark.django_db

CARD_SCHEMA = {"task": "binary_classification",
               "features": [{"name": "age", "type": "float", "center": 60.0, "scale": 15.0},
                            {"name": "lactate", "type": "float", "center": 2.0, "scale": 1.5,
                             "missing": "constant", "fill_value": 2.0},
                            {"name": "sex", "type": "categorical", "categories": ["f", "m"]}],
               "label": {"name": "died", "type": "binary"}}


def _released(w, tmp_path) -> tuple[Study, bytes]:
    """A completed study of Alpha and Beta (both approved) whose released file is a real model."""
    from fedproto import preprocessing
    from hospital_node.networks import build_model
    from hospital_node.tools import package_model

    s = services.study_create(consortium=w.c1, name="Sepsis card", purpose="Flag adults at risk of in-hospital death "
                              "from sepsis within 48 h of admission.", hospitals=[w.h1, w.h2], schema=CARD_SCHEMA,
                              model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=16,
                              learning_rate=0.1, privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
                              encryption={"codec": "bfv-packed-v1"}, quorum=2, round_deadline_s=60, seed=1)
    services.study_open_recruitment(study=s, actor="test")
    for h in (w.h1, w.h2):
        services.participation_decide(participation=s.participations.get(hospital=h), decision="approve",
                                      actor=f"user:{w.users['hadmin1' if h == w.h1 else 'hadmin2'].pk}:x")
    doc = preprocessing.build(CARD_SCHEMA)
    data = package_model(build_model({"type": "logistic_regression"}, len(doc["columns"])).state_dict(),
                         {"type": "logistic_regression"}, doc)
    sha = hashlib.sha256(data).hexdigest()
    d = Path(settings.MEDIA_ROOT) / "models"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"card_{s.pk}.safetensors").write_bytes(data)
    for n in (1, 2):
        rnd = Round.objects.create(study=s, number=n, status=Round.Status.DONE)
        for h, eps in ((w.h1, 0.4 * n), (w.h2, 0.45 * n)):
            job = TrainingJob.objects.create(round=rnd, hospital=h, status=TrainingJob.Status.UPLOADED)
            PrivacySpend.objects.create(job=job, epsilon=eps, delta=1e-5, noise_multiplier=1.3, sample_rate=0.02,
                                        steps=20, clip_norm=1.0, accountant="rdp", accountant_version="1")
    last = Round.objects.get(study=s, number=2)
    RoundReport.objects.create(round=last, hospital=w.h1, metrics={"auc": 0.81, "accuracy": 0.74}, n_test=240,
                               model_sha256=sha, epsilon_spent=0.95,
                               local_only={"metrics": {"auc": 0.77}, "epsilon": 0.95, "noise_multiplier": 1.3,
                                           "sample_rate": 0.02, "steps": 20, "n_train": 900, "n_test": 240})
    RoundReport.objects.create(round=last, hospital=w.h2, metrics={"auc": 0.79, "accuracy": 0.52}, n_test=60,
                               model_sha256=sha, epsilon_spent=0.9)
    Study.objects.filter(pk=s.pk).update(status=Study.Status.COMPLETED)
    FinalModel.objects.create(study=s, path=f"models/card_{s.pk}.safetensors", sha256=sha, size_bytes=len(data),
                              uploaded_by=w.h1, round_number=2)
    return Study.objects.get(pk=s.pk), data


def _card(client, user, study) -> str:
    client.force_login(user)
    r = client.get(f"/studies/{study.pk}/model-card/")
    assert r.status_code == 200
    body = r.content.decode()
    return body[body.index('<article class="card modelcard"'):body.index("</article>")]


def test_every_viewer_reads_the_same_card_with_every_sites_rows(world, client, tmp_path):
    s, _ = _released(world, tmp_path)
    cards = {name: _card(client, world.users[name], s) for name in ("cadmin", "hadmin1", "hadmin2", "auditor",
                                                                        "researcher")}
    assert len(set(cards.values())) == 1, "the card differs between viewers"
    card = cards["hadmin1"]
    perf = card.split('id="site-performance"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<th scope="row">([^<]+)</th>', perf)
    assert rows == ["Alpha Hospital", "Beta Hospital"]       # Alpha's own admin sees Beta's row too
    assert "0.810" in perf and "240" in perf and "0.790" in perf and "60" in perf
    # Another consortium still gets nothing.
    client.force_login(world.users["outsider"])
    assert client.get(f"/studies/{s.pk}/model-card/").status_code == 404
    client.force_login(world.users["hadmin3"])
    assert client.get(f"/studies/{s.pk}/model-card/").status_code == 404


def test_the_card_says_what_a_clinician_needs(world, client, tmp_path):
    s, _ = _released(world, tmp_path)
    card = htmlmod.unescape(_card(client, world.users["hadmin2"], s))
    assert "Flag adults at risk of in-hospital death" in card                      # intended use
    feats = re.findall(r"<li><code>([^<]+)</code></li>", card.split('id="features"', 1)[1].split("</ol>", 1)[0])
    assert [f.split(" ")[0] for f in feats] == ["age", "lactate", "sex"]            # in order
    assert "(x - 60) / 15" in feats[0] and "a missing value becomes 2.0" in feats[1] and "one-hot over f, m" in feats[2]
    assert "released file's own metadata" in card and "age, lactate, sex=f, sex=m" in card
    assert "0.5 on the predicted probability" in card                              # threshold
    assert "Beta Hospital: only 60 held-out records" in card                        # limitations
    assert "Beta Hospital: AUC 0.79 but accuracy 0.52 at the 0.5 threshold" in card  # why they disagree
    assert "Alpha Hospital: AUC" not in card
    assert "ε = 1 and δ = 1e-05" in card and "whoever else colludes" in card         # privacy in words
    priv = card.split('id="site-privacy"', 1)[1].split("</table>", 1)[0]
    assert "0.950" in priv and "0.900" in priv                                      # largest cumulative, baseline incl.
    snippet = re.search(r'id="predict-snippet"[^>]*>(.*?)</pre>', card, re.S).group(1)
    assert "python -m hospital_node predict --model model.safetensors --csv new_patients.csv" in snippet
    assert f"/api/studies/{s.pk}/model" in snippet and s.final_model.sha256 in snippet
    assert card.index('id="appendix"') < card.index('id="encryption"')               # encryption in the appendix
    assert card.index('id="encryption"') > card.index('id="predict-snippet"')
    md = client.get(f"/studies/{s.pk}/model-card/?format=md").content.decode()
    assert "| Alpha Hospital | 0.810 | 0.740 | 240 |" in md and "| Beta Hospital | 0.790 | 0.520 | 60 |" in md
    assert "python -m hospital_node predict" in md


def test_the_cards_snippet_scores_a_csv_with_the_released_file(world, client, tmp_path, monkeypatch):
    from hospital_node.cli import main

    s, data = _released(world, tmp_path)
    card = htmlmod.unescape(_card(client, world.users["hadmin1"], s))
    snippet = re.search(r'id="predict-snippet"[^>]*>(.*?)</pre>', card, re.S).group(1)
    header = re.search(r"a header line with (\S+),", snippet).group(1)
    assert header == "age,lactate,sex"
    monkeypatch.chdir(tmp_path)
    Path("model.safetensors").write_bytes(data)
    Path("new_patients.csv").write_text(header + "\n71,3.2,m\n45,,f\n", encoding="utf-8")
    cmd = next(line for line in snippet.splitlines() if line.startswith("python -m hospital_node predict"))
    argv = cmd.split()[3:]
    assert main(argv) == 0
    lines = Path("scores.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "probability" and len(lines) == 3 and all(0 < float(v) < 1 for v in lines[1:])
    out = io.StringIO()
    with redirect_stdout(out):                                # the Python form of the snippet
        from hospital_node.tools import predict
        assert predict("model.safetensors", "new_patients.csv", out) == 2


def test_before_release_no_viewer_gets_per_hospital_rows(world, client):
    cards = {name: _card(client, world.users[name], world.both) for name in ("cadmin", "hadmin1", "hadmin2")}
    assert len(set(cards.values())) == 1
    assert "Filled in when the final model is released" in cards["cadmin"]
    assert "Alpha Hospital" not in cards["cadmin"] and "Beta Hospital" not in cards["cadmin"]


def test_an_unreadable_released_file_falls_back_to_the_schema_and_says_so(world, client):
    card = htmlmod.unescape(_card(client, world.users["cadmin"], world.s1))   # its file has an empty header
    assert "preprocessing could not be read" in card
    assert re.findall(r"<li><code>(\w+) ", card.split('id="features"', 1)[1].split("</ol>", 1)[0]) == ["age", "bmi"]

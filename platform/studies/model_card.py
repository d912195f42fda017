"""The model card: what a clinician needs to use a study's released model, one document for every
viewer (studies.access.StudyScope.published).

Built from the study definition, the released file itself (its safetensors metadata carries the
preprocessing it expects: fedproto.preprocessing), the final round's reports (each hospital's
score on its own held-out test split, its attestation) and the privacy spends. Nothing here
depends on who reads it; before the model is released the card has no per-hospital rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Max

from fedproto import ddp_config, preprocessing
from fedproto.codec import get_codec
from fedproto.errors import SpecError
from fedproto.schema import encoded_columns, label_classes

from .benefit import benefit_rows
from .models import Participation, PrivacySpend, RoundReport, Study
from .selectors import done_round, study_definition

MAX_HEADER_BYTES = 16 * 1024 * 1024
METRIC_ORDER = ("auc", "accuracy", "macro_auc", "c_index", "rmse", "brier")
METRIC_WORDS = {"auc": "AUC (area under the ROC curve: threshold-free ranking quality)",
                "accuracy": "accuracy at the decision threshold below",
                "macro_auc": "macro-averaged one-vs-rest AUC", "c_index": "concordance index (C-index)",
                "rmse": "root mean squared error, in the label's units", "brier": "Brier score"}
AUC_ACCURACY_GAP = 0.15  # AUC this far above accuracy: the threshold, not the ranking, fails the site
SMALL_TEST_SPLIT = 100   # fewer held-out records than this: the site's numbers are imprecise


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors file's header (no tensor is read)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= MAX_HEADER_BYTES:
            raise ValueError("not a safetensors header")
        header = json.loads(fh.read(n).decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("the file's header has no metadata")
    return meta


def released_preprocessing(study: Study) -> tuple[dict | None, str]:
    """(the preprocessing document the released model file carries, checked against the study; or
    None and why it cannot be shown)."""
    fm = getattr(study, "final_model", None)
    if fm is None:
        return None, "the model is not released yet"
    try:
        meta = safetensors_metadata(Path(settings.MEDIA_ROOT) / fm.path)
        return preprocessing.check_model_metadata(meta, study.schema, study.model_spec), ""
    except (OSError, ValueError, SpecError) as exc:
        return None, f"the released file's preprocessing could not be read ({str(exc)[:200]})"


def _schema_feature_line(f: dict) -> str:
    bits = [f"{f['name']} ({f['type']})"]
    if "range" in f:
        bits.append(f"range {f['range'][0]:g} to {f['range'][1]:g}, standardised with the federated statistics")
    elif "center" in f:
        bits.append(f"standardised as (x - {f['center']:g}) / {f['scale']:g}")
    if f.get("levels"):
        bits.append("levels " + ", ".join(map(str, f["levels"])))
    if f.get("categories"):
        bits.append("categories " + ", ".join(map(str, f["categories"])))
    bits.append(f"missing: {f.get('missing', 'error')}")
    return "; ".join(bits)


def threshold_text(task: str) -> str:
    return {
        "binary_classification": "0.5 on the predicted probability (logit 0): accuracy counts a patient as positive "
                                 "when P(label = 1) > 0.5. The threshold was not tuned for any site. AUC does not "
                                 "depend on it, so a site can show a good AUC and a poor accuracy when its patients' "
                                 "probabilities sit on one side of 0.5 (a different prevalence or calibration): choose "
                                 "the threshold for your use from your own validation data.",
        "multiclass_classification": "the class with the highest probability (no threshold).",
        "survival": "none: the output is a risk score for ranking patients (C-index); pick a cut-off from your own "
                    "data if you need groups.",
        "regression": "none: the output is the predicted value.",
    }.get(task, "none")


def _spend_by_hospital(study: Study) -> dict[int, dict]:
    """Per hospital: its largest cumulative epsilon reported in the study (jobs, round reports and
    the local-only baseline) and the delta and last noise multiplier of its jobs."""
    out: dict[int, dict] = {}
    for hid, e, d in (PrivacySpend.objects.filter(job__round__study=study).values("job__hospital_id")
                      .annotate(e=Max("epsilon"), d=Max("delta")).values_list("job__hospital_id", "e", "d")):
        out[hid] = {"epsilon": e, "delta": d, "noise_multiplier": None}
    for ps in PrivacySpend.objects.filter(job__round__study=study).order_by("job__round__number", "reported_at"):
        out[ps.job.hospital_id]["noise_multiplier"] = ps.noise_multiplier
    for hid, e, base in RoundReport.objects.filter(round__study=study).values_list("hospital_id", "epsilon_spent",
                                                                                   "local_only"):
        row = out.setdefault(hid, {"epsilon": None, "delta": study.delta, "noise_multiplier": None})
        for v in (e, base.get("epsilon") if isinstance(base, dict) else None):
            if isinstance(v, (int, float)) and (row["epsilon"] is None or v > row["epsilon"]):
                row["epsilon"] = float(v)
    return out


def privacy_words(study: Study, statement: dict[str, Any]) -> str:
    eps, delta = study.epsilon, study.delta
    core = (f"Each hospital's patients are protected by differential privacy with ε = {eps:g} and δ = {delta:g} for the "
            "whole study: whether or not any one patient's record was in a hospital's training data changes what "
            f"anyone can learn from the model, its updates and its reported scores by at most a factor e^ε ≈ "
            f"{2.718281828 ** eps:.3g}, except with a probability of at most δ. ")
    if statement.get("privacy_model") == "distributed":
        core += (f"The noise is distributed: each hospital adds a share and the platform only sees the encrypted, "
                 f"masked sum, so the guarantee holds while at most {study.collusion} hospital"
                 f"{'s' if study.collusion != 1 else ''} collude with the platform and at least {study.quorum} "
                 "take part in each round. ")
    else:
        core += ("Each hospital adds all of this noise itself (local differential privacy of its update), so the "
                 "guarantee holds whoever else colludes. ")
    return core + ("The test scores on this card are computed on held-out records that never trained the model and are "
                   "reported as plain numbers; they are not covered by the guarantee. A smaller ε is stronger "
                   "protection and a noisier model.")


def limitations(study: Study, sites: list[dict], doc: dict | None) -> list[str]:
    out = [f"Trained and tested only on the patients of the {len(sites)} participating hospital"
           f"{'s' if len(sites) != 1 else ''} of consortium {study.consortium.name}; it has not been validated "
           "prospectively or at any other site. Check it on your own patients before relying on it.",
           "Decision support, not a diagnosis: the model sees only the features listed above.",
           "Trained with differential privacy: the noise that protects patients costs some accuracy.",
           "A hospital's test split is a random share of its own records (the same period and population as its "
           "training records): it does not measure drift over time."]
    for s in sites:
        if s["n_test"] is not None and s["n_test"] < SMALL_TEST_SPLIT:
            out.append(f"{s['hospital']}: only {s['n_test']} held-out records; its scores are imprecise.")
        if s.get("worse"):
            out.append(f"{s['hospital']}: the federated model scores below that hospital's own local-only model on its "
                       "test split.")
        auc, acc = s.get("auc"), s.get("accuracy")
        if isinstance(auc, (int, float)) and isinstance(acc, (int, float)) and auc - acc > AUC_ACCURACY_GAP:
            out.append(f"{s['hospital']}: AUC {auc:.2f} but accuracy {acc:.2f} at the 0.5 threshold: the model ranks "
                       "its patients well, but the threshold does not suit them (a different prevalence or "
                       "calibration there); choose that site's threshold from its own validation data.")
        if s["n_test"] is None:
            out.append(f"{s['hospital']}: did not report on the final model.")
    if doc is not None and any(f.get("scaling") == "local" for f in doc["features"]):
        out.append("Some features were standardised with each hospital's own statistics: new patients cannot be "
                   "prepared exactly as in training, and `predict` refuses this model.")
    return out


def _statement(study: Study) -> dict[str, Any]:
    try:
        return ddp_config.statement(study_definition(study))
    except SpecError:
        return {"privacy_model": study.privacy_mode}


def model_card(study: Study) -> dict[str, Any]:
    """Everything the model card shows; the same for every viewer."""
    fm = getattr(study, "final_model", None)
    doc, doc_error = released_preprocessing(study)
    schema = study.schema
    if doc is not None:
        features = preprocessing.describe(doc)
        output_line = features.pop()
        columns = doc["columns"]
    else:
        features = [_schema_feature_line(f) for f in schema["features"]]
        output_line = "output: " + preprocessing.OUTPUTS.get(schema["task"], "")
        try:
            columns = encoded_columns(schema)
        except (SpecError, KeyError, TypeError):
            columns = []
    classes = label_classes(schema) if schema.get("task") in ("binary_classification", "multiclass_classification") \
        else None
    sites: list[dict] = []
    metrics: list[str] = []
    if fm is not None:
        last = done_round(study, fm.round_number)
        reports = {r.hospital_id: r for r in (RoundReport.objects.filter(round=last, superseded_at__isnull=True)
                                              .select_related("hospital"))} if last is not None else {}
        benefit = {b["hospital"]: b for b in benefit_rows(study)}
        spend = _spend_by_hospital(study)
        seen = {k for r in reports.values() if isinstance(r.metrics, dict) for k, v in r.metrics.items() if v is not None}
        metrics = [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))
        for p in (Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                  .select_related("hospital").order_by("hospital__name")):
            r = reports.get(p.hospital_id)
            b = benefit.get(p.hospital.name) or {}
            sp = spend.get(p.hospital_id) or {}
            sites.append({"hospital": p.hospital.name, "decided_by": p.decided_by,
                          "metrics": [(r.metrics or {}).get(m) if r else None for m in metrics],
                          "auc": (r.metrics or {}).get("auc") if r else None,
                          "accuracy": (r.metrics or {}).get("accuracy") if r else None,
                          "n_test": r.n_test if r else None, "sha256": r.model_sha256 if r else "",
                          "attests_release": bool(r and r.model_sha256 == fm.sha256),
                          "local_only": b.get("local_only"), "local_metric": b.get("metric"),
                          "worse": bool(b.get("worse")), "epsilon": sp.get("epsilon"),
                          "delta": sp.get("delta"), "noise_multiplier": sp.get("noise_multiplier")})
    st = _statement(study)
    holdout = (study.evaluation or {}).get("holdout", "auto")
    return {"s": study, "fm": fm, "preprocessing": doc, "preprocessing_error": doc_error, "features": features,
            "output_line": output_line, "columns": columns, "classes": classes, "sites": sites, "metrics": metrics,
            "metric_words": [(m, METRIC_WORDS.get(m, m)) for m in metrics],
            "holdout": "auto: 10 % to 20 % of each hospital's rows by its size, none under 50 rows"
                       if holdout == "auto" else f"{float(holdout):.0%} of each hospital's rows",
            "threshold": threshold_text(schema.get("task", "")), "privacy_words": privacy_words(study, st),
            "statement": st, "limitations": limitations(study, sites, doc),
            "csv_header": ",".join(f["name"] for f in schema["features"]),
            "enc": get_codec(study.encryption["codec"]).describe(study.encryption)}

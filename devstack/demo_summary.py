"""The demo's closing summary: federated model quality, local-only baselines under the same
privacy budget, privacy spent (reported and recomputed), wire cost of encryption, audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from django.conf import settings

from audit.selectors import verify_all, verify_study_chain
from consortia.models import Hospital
from fedproto.codec import get_codec
from fedproto.study import StudyConfig
from studies.models import EncryptedUpdate, PrivacySpend, Round, Study
from studies.selectors import study_config

from .demo_data import DemoData


def build_summary(study: Study, data: DemoData, hospitals: list[Hospital], wall_study: float, wall_total: float,
                  say: Callable[[str], object]) -> dict:
    # torch and Opacus take seconds to import: loaded once the study is done, not before the
    # demo's processes start.
    from hospital_node.data import load_study_data
    from hospital_node.networks import load_model_bytes
    from hospital_node.trainer import evaluate, train_local_only
    from reports.epsilon_check import recompute_study

    cfg = StudyConfig.from_wire(study_config(study))
    recomputed = {h.hospital_id: h for h in recompute_study(study).hospitals}
    from fedproto import preprocessing
    from studies.models import RoundReport

    # the constants every hospital prepared its rows with: the schema's, or the statistics round's
    rep = RoundReport.objects.filter(round__study=study, round__number=0, preprocessing__isnull=False).first()
    stats = rep.preprocessing["statistics"] if rep is not None else None
    doc = preprocessing.build(cfg.schema, stats)
    center = np.array([f["center"] for f in doc["features"]])
    scale = np.array([f["scale"] for f in doc["features"]])
    X_test = ((data.X_test - center) / scale).astype(np.float32)
    fm = study.final_model
    model = load_model_bytes(cfg, (Path(settings.MEDIA_ROOT) / fm.path).read_bytes())
    test = evaluate(model, X_test, data.y_test, "binary_classification")
    say("Training local-only baselines under the same privacy budget …")
    rows = []
    for h in hospitals:
        spend = PrivacySpend.objects.filter(job__hospital=h, job__round__study=study).order_by("-epsilon").first()
        ds = load_study_data(cfg, data.hospital_csvs[h.name], stats)
        local = train_local_only(cfg, ds.X_train, ds.y_train, seed=h.pk)
        rows.append({
            "name": h.name, "epsilon_spent": spend.epsilon if spend else 0.0, "epsilon_budget": study.epsilon,
            "delta": study.delta, "n_train": int(len(ds.y_train)),
            "noise_multiplier": spend.noise_multiplier if spend else None,
            "sample_rate": spend.sample_rate if spend else None,
            "steps": sum(PrivacySpend.objects.filter(job__hospital=h, job__round__study=study)
                         .values_list("steps", flat=True)),
            "accountant": spend.accountant if spend else None,
            "dp_engine": spend.dp_engine if spend else None,
            # Opacus's accountant re-run here from the inputs the node reported (not trusted from the node).
            "epsilon_recomputed": recomputed[h.pk].recomputed if h.pk in recomputed else None,
            "epsilon_matches_accountant": bool(h.pk in recomputed and recomputed[h.pk].ok),
            "local_only_test_auc": evaluate(local, X_test, data.y_test, "binary_classification")["auc"],
        })
    sizes = list(EncryptedUpdate.objects.filter(job__round__study=study, job__round__number__gte=1)  # model updates
                 .values_list("size_bytes", flat=True))
    codec = get_codec(study.encryption["codec"])
    params = codec.describe(study.encryption)
    n_parts = codec.n_parts(study.encryption, study.n_params)
    # A ciphertext holds many more values than this 31-parameter model: report the wire cost per
    # parameter slot of a full upload (what a real model pays) and the cost for this model.
    capacity = params["values_per_slot"] * (params["slots_per_ciphertext"] * n_parts - params["header_slots"]) \
        if {"values_per_slot", "slots_per_ciphertext", "header_slots"} <= params.keys() else None
    chain = verify_study_chain(study.pk)
    rounds_done = Round.objects.filter(study=study, status=Round.Status.DONE, number__gte=1).count()  # training rounds
    return {
        "study_id": study.pk, "rounds_completed": rounds_done, "rounds_planned": study.rounds,
        "test_auc": test["auc"], "test_accuracy": test["accuracy"], "n_test": int(len(data.y_test)),
        "hospitals": rows,
        "encryption": {"scheme": params.get("scheme", study.encryption["codec"]),
                       "codec": study.encryption["codec"],
                       "bytes_per_parameter": (float(np.mean(sizes)) / capacity) if sizes and capacity else None,
                       "bytes_per_parameter_this_model": (float(np.mean(sizes)) / study.n_params) if sizes else None,
                       "upload_capacity_parameters": capacity, "n_params": study.n_params,
                       "mean_upload_bytes": float(np.mean(sizes)) if sizes else None, "parameters": params},
        "final_model_sha256": fm.sha256,
        "audit_chain_valid": chain.ok and all(r.ok for r in verify_all()),
        "audit_head_hash": chain.head_hash,
        "wall_seconds_study": round(wall_study, 2), "wall_seconds_total": round(wall_total, 2),
    }


def summary_lines(s: dict) -> list[str]:
    """The summary as the demo prints it."""
    lines = ["", "=" * 72,
             f"Demo study #{s['study_id']}: {s['rounds_completed']}/{s['rounds_planned']} rounds completed "
             f"in {s['wall_seconds_study']:.1f} s",
             f"Federated model on the held-out set: ROC AUC {s['test_auc']:.4f}, accuracy {s['test_accuracy']:.4f} "
             f"(n={s['n_test']})",
             f"{'hospital':34} {'n_train':>7} {'epsilon':>8} {'Opacus':>8} {'budget':>7} {'local-only AUC':>15}"]
    for h in s["hospitals"]:
        lines.append(f"{h['name']:34} {h['n_train']:7d} {h['epsilon_spent']:8.4f} {h['epsilon_recomputed'] or 0:8.4f} "
                     f"{h['epsilon_budget']:7.2f} {h['local_only_test_auc']:15.4f}")
    lines.append("  (epsilon: reported by the node; Opacus: recomputed here from the noise, sampling rate and steps it used)")
    engines = sorted({h["dp_engine"] or "not reported" for h in s["hospitals"]})
    lines.append(f"DP-SGD engine on the nodes: {', '.join(engines)}"
                 + (" (Opacus' DPOptimizer step in matrix form, checked against Opacus 'ew' at node start-up)"
                    if engines == ["fused"] else ""))
    e = s["encryption"]
    lines.append(f"Encryption: {e['scheme']} ({e['codec']}): {e['bytes_per_parameter']:.2f} bytes per parameter on the "
                 f"wire for a full upload ({e['upload_capacity_parameters']} parameters per upload); this "
                 f"{e['n_params']}-parameter model pays {e['mean_upload_bytes'] / 1024:.1f} KiB per upload")
    lines.append(f"Audit chain valid: {s['audit_chain_valid']} (head {s['audit_head_hash'][:16]}…)")
    lines.append("=" * 72)
    return lines

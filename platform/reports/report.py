"""The study audit report: one template, rendered as an HTML page and as a PDF (WeasyPrint).

It is built only from the database and the audit chain (nothing the nodes could not also check),
and reads: configuration, participants and approvals, per-round participation, privacy spend
(reported and recomputed), encryption parameters, attested model hashes, every refusal, rejection
and failure, software versions and the chain verification result with its head hash.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import opacus
from django.template.loader import render_to_string
from django.utils import timezone

import fedproto
from audit.selectors import study_events, verify_study_chain
from fedproto.codec import get_codec
from fedproto.evaluation import describe as describe_evaluation
from studies import selectors as study_selectors
from studies.benefit import benefit_rows, benefit_summary
from studies.models import FinalModel, HEContext, Participation, SealedKey

from . import selectors
from .epsilon_check import Accountants, recompute_study
from .privacy_cache import cached_recompute
from .privacy_model import privacy_model_line

# Encryption parameters shown first, in this order; the rest follow alphabetically.
ENC_FIRST = ("codec", "scheme", "security_level_bits", "poly_modulus_degree", "plain_modulus", "plain_modulus_bits",
             "coeff_mod_bit_sizes", "encryption", "quant_bits", "quant_step", "update_clip", "weight_cap_samples",
             "max_hospitals")
ENC_SKIP = ("coeff_modulus",)  # the primes themselves: long, and implied by the bit sizes and SEAL's defaults


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items())
    return "—" if v is None else str(v)


def _encryption(study) -> dict:
    try:
        desc = get_codec(study.encryption["codec"]).describe(study.encryption)
    except Exception as exc:  # an unknown codec must not hide the rest of the report
        desc = {"codec": study.encryption.get("codec"), "error": str(exc)}
    keys = [k for k in ENC_FIRST if k in desc]
    technical = sorted(k for k in desc if k not in ENC_FIRST and k not in ENC_SKIP)
    ctx = HEContext.objects.filter(study=study).select_related("published_by").first()
    return {
        "params": [(k.replace("_", " "), _fmt_value(desc[k])) for k in keys],
        "technical": [(k.replace("_", " "), _fmt_value(desc[k])) for k in technical],
        "scheme": desc.get("scheme", study.encryption.get("codec")),
        "security_level_bits": desc.get("security_level_bits"),
        "context": ctx,
        "sealed_keys": SealedKey.objects.filter(study=study).count(),
    }


def _participants(study) -> list[dict]:
    rows = []
    for p in Participation.objects.filter(study=study).select_related("hospital").order_by("hospital__name"):
        rows.append({"hospital": p.hospital.name, "state": p.state, "decided_by": p.decided_by,
                     "decided_at": p.decided_at, "reason": p.reason, "key_acked_at": p.key_acked_at,
                     "custodian": study.custodian_id == p.hospital_id, "node_version": p.hospital.node_version,
                     "max_epsilon": p.hospital.max_epsilon})
    return rows


def _privacy(study, recomputed, spends: dict) -> list[dict]:
    checks = {h.hospital: h for h in recomputed.hospitals}
    rows = []
    for name, row in spends.items():
        spends = row["spends"]
        last = spends[-1] if spends else None
        chk = checks.get(name)
        rows.append({
            "hospital": name, "jobs": len(spends), "epsilon": row["epsilon"],
            "recomputed": chk.recomputed if chk else None, "ok": chk.ok if chk else True,
            "within_budget": chk.within_budget if chk else True,
            "problems": chk.problems if chk else [],
            "budget": study.epsilon, "max_epsilon": row["max_epsilon"],
            "delta": last.delta if last else None, "noise_multiplier": last.noise_multiplier if last else None,
            "clip_norm": last.clip_norm if last else None, "sample_rate": last.sample_rate if last else None,
            "steps": sum(s.steps for s in spends), "accountant": last.accountant if last else "",
            "accountant_version": last.accountant_version if last else "",
            "dp_engines": _dp_engines(spends),
            "used_pct": 100.0 * row["epsilon"] / study.epsilon if study.epsilon else None,
        })
    return rows


def _dp_engines(spends) -> str:
    """How the hospital's jobs were trained, e.g. "fused step (checked against Opacus)" or
    "Opacus ew"; several when the hospital changed engine during the study."""
    names = []
    for s in spends:
        e = s.dp_engine
        label = ("fused step (checked against Opacus)" if e == "fused" else f"Opacus {e}" if e else "not reported")
        if label not in names:
            names.append(label)
    return ", ".join(names)


def _software(study) -> dict:
    node_versions = sorted({v for v in Participation.objects.filter(study=study)
                            .values_list("hospital__node_version", flat=True) if v})
    try:
        import tenseal
        tenseal_version = tenseal.__version__
    except Exception:  # pragma: no cover - TenSEAL is a platform dependency
        tenseal_version = "unavailable"
    return {"software_version": fedproto.SOFTWARE_VERSION, "protocol_version": fedproto.PROTOCOL_VERSION,
            "opacus_version": opacus.__version__, "tenseal_version": tenseal_version, "node_versions": node_versions}


def _describe_problem(ev) -> str:
    d = ev.data or {}
    parts = []
    if "round" in d:
        parts.append(f"round {d['round']}" + (f" (attempt {d['attempt']})" if d.get("attempt", 1) != 1 else ""))
    if ev.action == "privacy.recompute":
        bad = [h for h in d.get("hospitals", []) if not (h.get("ok") and h.get("within_budget", True))]
        parts.append("epsilon recomputation found mismatches for " + ", ".join(h["hospital"] for h in bad))
    elif ev.action == "model.attestation_mismatch":
        parts.append("hospitals attested different model hashes: " + ", ".join(h[:16] + "…" for h in d.get("hashes", [])))
    if d.get("code"):
        parts.append(f"[{d['code']}]")
    if d.get("reason"):
        parts.append(str(d["reason"]))
    return " ".join(parts) if parts else "—"


def build_context(study, *, cached: bool = True, accountants: Accountants | None = None) -> dict:
    """Everything the report shows. The epsilon recomputation is the one kept on the study
    (privacy_cache: recomputed only if an input changed since); ``cached=False`` recomputes it
    here without touching the stored one (``accountants``: how, for the benchmark's baseline)."""
    chain = verify_study_chain(study.pk)
    spends = selectors.privacy_spends(study)
    if cached:
        recomputed, row = cached_recompute(study, spends=spends)
        recomputed_at, recompute_seconds = row.computed_at, row.seconds
    else:
        t0 = timezone.now()
        recomputed = recompute_study(study, accountants=accountants, spends=spends)
        recomputed_at, recompute_seconds = timezone.now(), (timezone.now() - t0).total_seconds()
    events = study_events(study.pk)
    problems = [{"seq": ev.seq, "at": ev.created_at, "action": ev.action, "actor": ev.actor,
                 "what": _describe_problem(ev)} for ev in selectors.problem_events(study.pk)]
    fm = FinalModel.objects.filter(study=study).select_related("uploaded_by").first()
    atts = selectors.attestations(study)
    benefit = _benefit_checked(study, spends)
    schema = study.schema or {}
    return {
        "study": study,
        "generated_at": timezone.now(),
        "config": [
            ("Task", schema.get("task", "")),
            ("Features", f"{len(schema.get('features', []))}: "
                         + ", ".join(f.get("name", "?") for f in schema.get("features", []))),
            ("Label", (schema.get("label") or {}).get("name", "")),
            ("Model", _fmt_value(study.model_spec)),
            ("Parameters", study.n_params),
            ("Rounds", study.rounds),
            ("Local epochs × batch size", f"{study.local_epochs} × {study.batch_size}"),
            ("Learning rate", _fmt_value(study.learning_rate)),
            ("Evaluation", describe_evaluation(study.evaluation)),
            ("Quorum", f"{study.quorum} updates per round; {study.max_round_attempts} attempts per round"),
            ("Round deadline", f"{study.round_deadline_s} s"),
            ("Privacy budget", f"ε = {study.epsilon:g}, δ = {study.delta:g}, clip norm {study.clip_norm:g}, "
                               f"accountant {study.accountant.upper()}"),
            ("Privacy model", privacy_model_line(study)),
            ("Seed", study.seed),
        ],
        "participants": _participants(study),
        "rounds": selectors.round_participation(study),
        "privacy": _privacy(study, recomputed, spends),
        "recompute": recomputed,
        "recomputed_at": recomputed_at,
        "recompute_seconds": recompute_seconds,
        "n_spends": sum(len(r["spends"]) for r in spends.values()),
        "encryption": _encryption(study),
        "attestations": atts,
        "attestation_mismatch": any(a["mismatch"] for a in atts),
        "benefit": benefit,
        "data_preparation": study_selectors.data_preparation(study),
        "benefit_summary": benefit_summary(benefit),
        "final_model": fm,
        "downloads": events.filter(action="model.downloaded").count(),
        "problems": problems,
        "software": _software(study),
        "chain": chain,
        "n_events": events.count(),
    }


def _benefit_checked(study, spends: dict) -> list[dict]:
    """The collaboration benefit rows, each baseline's reported epsilon recomputed by Opacus' accountant
    from the hospital's job spends plus the baseline run (docs/privacy.md: it is inside the budget)."""
    rows = benefit_rows(study)
    acc = Accountants()
    for r in rows:
        row = spends.get(r["hospital"])
        r["epsilon_recomputed"], r["epsilon_ok"] = None, None
        if r["entry"] is None:
            continue
        jobs = [(ps.noise_multiplier, ps.sample_rate, ps.steps) for ps in row["spends"]] if row else []
        eps = acc.epsilon([*jobs, tuple(r["entry"])], study.delta, study.accountant)
        cap = min([study.epsilon] + ([row["max_epsilon"]] if row and row["max_epsilon"] else []))
        r["epsilon_recomputed"] = eps
        r["epsilon_ok"] = math.isclose(eps, r["epsilon_local_only"], rel_tol=1e-6, abs_tol=1e-9) and eps <= cap + 1e-9
    return rows


REPORT_CSS = Path(__file__).parent / "static" / "reports" / "report.css"


def render_html(study, *, for_pdf: bool = False, request=None, context: dict | None = None) -> str:
    """The report page. For a web request the stylesheet is a static file (the Content-Security-Policy
    allows no inline style); the PDF and the exported report.html (opened from disk) carry it inline."""
    ctx = dict(context or build_context(study))
    ctx["for_pdf"] = for_pdf
    ctx["inline_css"] = for_pdf or request is None
    if ctx["inline_css"]:
        ctx["report_css"] = REPORT_CSS.read_text(encoding="utf-8")
    return render_to_string("reports/report.html", ctx, request=request)


class PdfUnavailable(RuntimeError):
    """WeasyPrint cannot run here: it or the system libraries it loads (Pango) are missing."""


def render_pdf(study, *, context: dict | None = None) -> bytes:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: WeasyPrint is installed but cannot load Pango
        raise PdfUnavailable(
            f"the PDF report cannot be rendered here ({exc.__class__.__name__}: {exc}); it needs WeasyPrint "
            "(requirements.txt) and Pango (Debian: apt-get install -y libpango-1.0-0 libpangoft2-1.0-0, "
            "or `make system-deps`); the HTML report has the same content") from None

    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)  # one INFO line per layout step

    html = render_html(study, for_pdf=True, context=context)
    return HTML(string=html, base_url=str(Path(__file__).parent)).write_pdf()


def write_study_report(*, study, out_dir) -> list[Path]:
    """Write report.html and report.pdf for ``study`` into ``out_dir``; return their paths.

    The HTML is written first; where the PDF cannot be rendered, PdfUnavailable is raised after it
    (and no report.pdf is left behind from an earlier run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = build_context(study)
    html_path, pdf_path = out / "report.html", out / "report.pdf"
    html_path.write_text(render_html(study, context=ctx), encoding="utf-8")
    try:
        pdf = render_pdf(study, context=ctx)
    except PdfUnavailable:
        pdf_path.unlink(missing_ok=True)
        raise
    pdf_path.write_bytes(pdf)
    return [html_path, pdf_path]

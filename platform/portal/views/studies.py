"""Study pages: define a study (with the noise preview), the study page and its live timeline,
charts, the actions (start, pause, resume, cancel), the model download and the model card."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.services import actor_label
from consortia.models import Consortium
from fedproto.codec import get_codec
from fedproto.errors import SpecError
from fedproto.study import MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS, MAX_ROUNDS, Privacy
from studies import access, results, schema_draft, selectors, services
from studies.benefit import benefit_rows, benefit_summary
from studies.model_card import model_card as build_model_card
from studies.models import PrivacySpend, Round, RoundReport, Study, TrainingJob

from .. import charts, noise_preview
from ..forms import STUDY_PRESETS, StudyForm, initial_from_study

LIVE_STATUSES = {Study.Status.RECRUITING, Study.Status.RUNNING, Study.Status.PAUSED}


@csrf_exempt  # only so that the upload handler can be set before the body is read; _study_new checks CSRF
def study_new(request):
    # A schema sample is read into memory only (never a temporary file), at most its limit + 1 bytes.
    request.upload_handlers = [schema_draft.SampleUploadHandler(request)]
    return _study_new(request)


def _draft_step(request, consortia) -> tuple[StudyForm, dict]:
    """The "draft the schema" button: the form as it was sent, its schema box replaced by the draft
    from the uploaded sample or from the CSV text in the box. The sample is not kept or logged."""
    data = request.POST
    form = StudyForm(consortia=consortia)
    initial = {k: (data.getlist(k) if k == "hospitals" else data.get(k)) for k in form.fields if k in data}
    upload = request.FILES.get("schema_sample")
    text = data.get("schema_text", "")
    ctx: dict = {}
    try:
        if upload is not None:
            sample = schema_draft.upload_bytes(upload)
        elif text.strip() and not text.lstrip().startswith("{"):
            sample = text
        else:
            raise schema_draft.DraftError("choose a sample CSV file, or paste the CSV header line (or a few rows) "
                                          "into the Data schema box, then press Draft the schema")
        draft = schema_draft.draft_schema(sample, task=data.get("task") or "binary_classification",
                                          label=(data.get("label_column") or "").strip())
    except schema_draft.DraftError as exc:
        ctx["draft_error"] = str(exc)
    else:
        initial["schema_text"] = json.dumps(draft["schema"], indent=2)
        ctx["draft"] = draft
    return StudyForm(initial=initial, consortia=consortia), ctx


def _definition(d: dict) -> dict:
    """The service arguments of a valid StudyForm (study_create and study_update)."""
    return dict(name=d["name"], purpose=d["purpose"], hospitals=list(d["hospitals"]), schema=d["schema"],
                model_spec=d["model_spec"], rounds=d["rounds"], local_epochs=d["local_epochs"],
                batch_size=d["batch_size"], learning_rate=d["learning_rate"],
                privacy={"epsilon": d["epsilon"], "delta": d["delta"], "clip_norm": d["clip_norm"]},
                encryption=d["encryption"], quorum=d["quorum"], round_deadline_s=d["round_deadline_s"],
                evaluation=d["evaluation"], datasets=d["datasets"],
                recruitment_window_s=(d.get("recruitment_days") or 7) * 24 * 3600)


def _to_study_page(study, d: dict):
    sizes = noise_preview.parse_sizes(d.get("dataset_sizes"))
    return redirect(reverse("portal:study", args=[study.pk]) + "?sizes=" + ",".join(map(str, sizes)))


def _clone_source(request) -> Study | None:
    """The study a cloned definition came from (hidden field ``cloned_from``): one the user manages,
    else 404 (another consortium's study) or 403, like opening its clone page."""
    raw = request.POST.get("cloned_from", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise Http404("no such study")
    scope = access.study_scope(request.user, int(raw))
    if not scope.can_manage:
        raise PermissionDenied("only researchers and consortium admins clone studies")
    return scope.study


@login_required
@require_http_methods(["GET", "POST"])
@csrf_protect
def _study_new(request):
    consortia = access.consortia_with_role(request.user, access.MANAGE_STUDY_ROLES)
    if not consortia.exists():
        raise PermissionDenied("only researchers and consortium admins define studies")
    source = _clone_source(request) if request.method == "POST" else None
    extra = {"cloned_from": source} if source else {}
    if request.method == "POST" and "draft_schema" in request.POST:
        form, draft_ctx = _draft_step(request, consortia)
        return _render_new(request, form, {**extra, **draft_ctx}, 422 if "draft_error" in draft_ctx else 200)
    form = StudyForm(request.POST or None, consortia=consortia)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            d = form.cleaned_data
            try:
                study = services.study_create(consortium=d["consortium"], owner=request.user, cloned_from=source,
                                              actor=actor_label(user=request.user), **_definition(d))
            except SpecError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Study created as a draft. Check what the privacy budget implies, then start it.")
                return _to_study_page(study, d)
        status = 422
    return _render_new(request, form, extra, status)


@login_required
@require_GET
def study_clone(request, study_id: int):
    """The new-study form filled in with an existing study's definition (any status); nothing is
    created until the researcher presses Create (POST /studies/new/ with ``cloned_from``)."""
    scope = access.study_scope(request.user, study_id)
    if not scope.can_manage:
        raise PermissionDenied("only researchers and consortium admins clone studies")
    consortia = access.consortia_with_role(request.user, access.MANAGE_STUDY_ROLES)
    form = StudyForm(consortia=consortia)
    form = StudyForm(initial=initial_from_study(scope.study, form, name=f"Copy of {scope.study.name}"[:200]),
                     consortia=consortia)
    return _render_new(request, form, {"cloned_from": scope.study}, 200)


@csrf_exempt  # only so that the upload handler can be set before the body is read; _study_edit checks CSRF
def study_edit(request, study_id: int):
    request.upload_handlers = [schema_draft.SampleUploadHandler(request)]
    return _study_edit(request, study_id)


@login_required
@require_http_methods(["GET", "POST"])
@csrf_protect
def _study_edit(request, study_id: int):
    """Edit a draft with the new-study form (services.study_update, audited as study.edited)."""
    scope = access.study_scope(request.user, study_id)
    if not scope.can_manage:
        raise PermissionDenied("only researchers and consortium admins edit studies")
    study = scope.study
    if study.status != Study.Status.DRAFT:
        messages.error(request, f"This study is {study.status}: only a draft can be edited. Clone it into a new draft "
                                "to change its definition.")
        return redirect("portal:study", study_id=study.pk)
    consortia = Consortium.objects.filter(pk=study.consortium_id)
    extra = {"editing": study}
    if request.method == "POST" and "draft_schema" in request.POST:
        form, draft_ctx = _draft_step(request, consortia)
        return _render_new(request, form, {**extra, **draft_ctx}, 422 if "draft_error" in draft_ctx else 200)
    if request.method == "GET":
        form = StudyForm(consortia=consortia)
        return _render_new(request, StudyForm(initial=initial_from_study(study, form), consortia=consortia), extra, 200)
    form = StudyForm(request.POST, consortia=consortia)
    if form.is_valid():
        d = form.cleaned_data
        try:
            services.study_update(study=study, actor=actor_label(user=request.user), **_definition(d))
        except SpecError as exc:
            form.add_error(None, str(exc))
        except services.ServiceError as exc:
            form.add_error(None, str(exc))
            return _render_new(request, form, extra, 409)
        else:
            messages.success(request, "Draft saved. Check what the privacy budget implies, then start it.")
            return _to_study_page(study, d)
    return _render_new(request, form, extra, 422)


def _render_new(request, form: StudyForm, extra: dict, status: int):
    enc_desc = []
    for key, label, enc in form.presets:
        desc = get_codec(enc["codec"]).describe(enc)
        enc_desc.append({"key": key, "label": label, "desc": {k: desc[k] for k in (
            "scheme", "poly_modulus_degree", "security_level_bits", "quant_bits", "max_hospitals") if k in desc}})
    return render(request, "portal/study_new.html", {"form": form, "presets": STUDY_PRESETS,
                                                     "presets_json": json.dumps(STUDY_PRESETS), "enc_desc": enc_desc,
                                                     "sample_limit": schema_draft.MAX_SAMPLE_BYTES, **extra},
                  status=status)


@login_required
@require_GET
def privacy_preview(request):
    """HTML fragment: noise multipliers implied by a budget (used live by the new-study form)."""
    if not access.consortia_with_role(request.user, access.MANAGE_STUDY_ROLES).exists():
        raise PermissionDenied
    try:
        # The study's own rules (fedproto.study); a SpecError is a ValueError.
        privacy = Privacy.parse({"epsilon": float(request.GET["epsilon"]), "delta": float(request.GET["delta"]),
                                 "clip_norm": 1.0})
        batch = int(request.GET["batch_size"])
        rounds = int(request.GET["rounds"])
        epochs = int(request.GET["local_epochs"])
        if not (1 <= batch <= MAX_BATCH_SIZE and 1 <= rounds <= MAX_ROUNDS and 1 <= epochs <= MAX_LOCAL_EPOCHS):
            raise ValueError
        eps, delta = privacy.epsilon, privacy.delta
    except (KeyError, ValueError):
        return HttpResponse('<p class="muted">Fill in ε, δ, batch size, rounds and local epochs to see the noise they imply.</p>')
    table = noise_preview.budget_table(epsilon=eps, delta=delta, batch_size=batch, rounds=rounds, epochs=epochs,
                                       sizes=noise_preview.parse_sizes(request.GET.get("sizes")))
    return render(request, "portal/_privacy_table.html", {"t": table})


def _round_rows(scope: access.StudyScope):
    study = scope.study
    rounds = list(Round.objects.filter(study=study).order_by("number", "attempt"))
    jobs = scope.filter_hospital(TrainingJob.objects.filter(round__study=study).select_related("hospital"))
    by_round: dict[int, list] = {}
    for j in jobs:
        by_round.setdefault(j.round_id, []).append(j)
    out = []
    for r in rounds:
        end = r.done_at or r.closed_at
        out.append({"r": r, "jobs": sorted(by_round.get(r.pk, []), key=lambda j: j.hospital.name),
                    "seconds": (end - r.opened_at).total_seconds() if end else None})
    return out


def _live_key(scope: access.StudyScope) -> str:
    s = scope.study
    n_rep = scope.filter_hospital(RoundReport.objects.filter(round__study=s)).count()
    n_sp = scope.filter_hospital(PrivacySpend.objects.filter(job__round__study=s), "job__hospital_id").count()
    return f"{n_rep}-{n_sp}-{hasattr(s, 'final_model')}"


@login_required
@require_GET
def study_detail(request, study_id: int):
    scope = access.study_scope(request.user, study_id)
    study = scope.study
    ctx = {"s": study, "scope": scope, "progress": selectors.study_progress(study),
           "parts": list(scope.participations()), "rounds": _round_rows(scope),
           "config_json": json.dumps(selectors.study_config(study), indent=2),
           "live": study.status in LIVE_STATUSES, "live_key": _live_key(scope),
           "final_model": getattr(study, "final_model", None),
           "enc": get_codec(study.encryption["codec"]).describe(study.encryption),
           "has_reports": RoundReport.objects.filter(round__study=study).exists(),
           "release_block": scope.release_block(), "recruitment": scope.recruitment()}
    ctx["results_table"] = charts.results_table(_metrics_data(scope), _spend_data(scope))
    ctx["data_preparation"] = selectors.data_preparation(study)
    ctx["benefit"] = benefit_rows(study, scope)
    ctx["benefit_summary"] = benefit_summary(ctx["benefit"])
    if study.status == Study.Status.DRAFT:
        ctx["privacy_table"] = noise_preview.budget_table(
            epsilon=study.epsilon, delta=study.delta, batch_size=study.batch_size, rounds=study.rounds,
            epochs=study.local_epochs, sizes=noise_preview.parse_sizes(request.GET.get("sizes")), accountant=study.accountant)
    return render(request, "portal/study.html", ctx)


@login_required
@require_GET
def study_live(request, study_id: int):
    """Fragment polled every 2 s while a study is live: the round timeline and a change key."""
    scope = access.study_scope(request.user, study_id)
    study = scope.study
    resp = render(request, "portal/_timeline.html", {
        "s": study, "rounds": _round_rows(scope), "progress": selectors.study_progress(study),
        "recruitment": scope.recruitment()})
    resp["X-Study-Status"] = study.status
    resp["X-Live-Key"] = _live_key(scope)
    resp["Cache-Control"] = "no-store"
    return resp


def _metrics_data(scope):
    reps = scope.filter_hospital(RoundReport.objects.filter(round__study=scope.study, superseded_at__isnull=True)
                                 .select_related("round", "hospital"))
    return [{"round": r.round.number, "hospital": r.hospital.name, "metrics": r.metrics} for r in reps]


def _spend_data(scope):
    sp = scope.filter_hospital(PrivacySpend.objects.filter(job__round__study=scope.study)
                               .select_related("job__round", "job__hospital"), "job__hospital_id")
    return [{"round": p.job.round.number, "hospital": p.job.hospital.name, "epsilon": p.epsilon,
             "delta": p.delta, "noise_multiplier": p.noise_multiplier, "hospital_obj": p.job.hospital} for p in sp]


@login_required
@require_GET
def chart_metrics(request, study_id: int):
    scope = access.study_scope(request.user, study_id)
    svg = charts.metrics_chart(_metrics_data(scope), rounds_planned=scope.study.rounds,
                               title="Global model, evaluated by each hospital on its own test split")
    return HttpResponse(svg, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@login_required
@require_GET
def chart_privacy(request, study_id: int):
    scope = access.study_scope(request.user, study_id)
    data = _spend_data(scope)
    caps = {d["hospital"]: d["hospital_obj"].max_epsilon for d in data if d["hospital_obj"].max_epsilon is not None}
    svg = charts.privacy_chart(data, budget=scope.study.epsilon, rounds_planned=scope.study.rounds, caps=caps)
    return HttpResponse(svg, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


ACTIONS = {"start": services.study_open_recruitment, "pause": services.study_pause,
           "resume": services.study_resume, "cancel": services.study_cancel}


@login_required
@require_POST
def study_action(request, study_id: int, action: str):
    scope = access.study_scope(request.user, study_id)
    if action not in ACTIONS:
        raise Http404
    if not scope.can_manage:
        raise PermissionDenied("only researchers and consortium admins manage studies")
    kwargs = {}
    if action == "cancel":
        kwargs["reason"] = request.POST.get("reason", "").strip()[:2000]
        if not kwargs["reason"]:
            messages.error(request, "Say why the study is cancelled (the reason is recorded in the audit trail and "
                                    "shown to the hospitals); the study was not cancelled.")
            return redirect("portal:study", study_id=scope.study.pk)
    try:
        ACTIONS[action](study=scope.study, actor=actor_label(user=request.user), **kwargs)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        done = {"start": "Recruitment opened: the invited hospitals now see the study.", "pause": "Study paused.",
                "resume": "Study resumed.", "cancel": "Study cancelled."}[action]
        messages.success(request, done)
    return redirect("portal:study", study_id=scope.study.pk)


RELEASE_ACTIONS = {"rerun": (services.release_rerun_evaluation, "The final round's reports are superseded: its "
                               "contributors evaluate the model again, then the custodian can release it."),
                   "override": (services.release_override, "Release allowed with the disagreement on record: the "
                                "custodian uploads the model now.")}


@login_required
@require_POST
def release_resolve(request, study_id: int, action: str):
    """A consortium admin resolves a blocked final-model release (both ways are audited)."""
    scope = access.study_scope(request.user, study_id)
    if action not in RELEASE_ACTIONS:
        raise Http404
    actor = actor_label(user=request.user)
    if not scope.can_resolve_release:
        services.release_resolution_refused(study=scope.study, actor=actor, action=action)
        raise PermissionDenied("only consortium admins resolve a blocked release")
    fn, done = RELEASE_ACTIONS[action]
    try:
        fn(study=scope.study, actor=actor)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect("portal:study", study_id=scope.study.pk)


@login_required
@require_GET
def model_download(request, study_id: int):
    scope = access.study_scope(request.user, study_id)
    fm = getattr(scope.study, "final_model", None)
    if fm is None:
        raise Http404("the final model is not released yet")
    if not scope.can_download_model:
        raise PermissionDenied("only the study's researchers, auditors and participating hospitals download the model")
    services.final_model_downloaded(study=scope.study, actor=actor_label(user=request.user))
    resp = FileResponse(open(Path(settings.MEDIA_ROOT) / fm.path, "rb"), as_attachment=True,
                        filename=f"study_{scope.study.pk}_model.safetensors", content_type="application/octet-stream")
    resp["X-Model-SHA256"] = fm.sha256
    return resp


@login_required
@require_GET
def model_card(request, study_id: int):
    """The model card, the same for every viewer (access.model_card_study, studies.model_card)."""
    study = access.model_card_study(request.user, study_id)
    scope = access.scope_for(request.user, study)
    ctx = {**build_model_card(study), "scope": scope, "generated": timezone.now(),
           "api_model_url": request.build_absolute_uri(f"/api/studies/{study.pk}/model")}
    if request.GET.get("format") == "md":
        text = render(request, "portal/model_card.md", ctx).content
        return HttpResponse(text, content_type="text/markdown; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="study_{study.pk}_model_card.md"'})
    return render(request, "portal/model_card.html", ctx)


@login_required
@require_GET
def study_results(request, study_id: int, fmt: str):
    """The study's results (round reports) as CSV or JSON, as this viewer may see them."""
    scope = access.study_scope(request.user, study_id)
    name = f"study-{scope.study.pk}-results.{fmt}"
    if fmt == "csv":
        resp = HttpResponse(results.results_csv(scope), content_type="text/csv; charset=utf-8")
    else:
        resp = HttpResponse(json.dumps(results.results_json(scope), indent=1), content_type="application/json")
    resp["Content-Disposition"] = f'attachment; filename="{name}"'
    return resp

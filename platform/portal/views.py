"""Portal views: thin. Reads go through portal.access (object-level checks), writes through the
service functions (each writes its audit event)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.services import actor_label
from consortia import services as consortia_services
from consortia.models import Hospital, Membership
from consortia.selectors import MANAGE_STUDY_ROLES
from fedproto.codec import get_codec
from fedproto.errors import SpecError
from fedproto.study import MAX_LOCAL_EPOCHS, MAX_ROUNDS
from studies import selectors, services
from studies.models import Participation, PrivacySpend, Round, RoundReport, Study, TrainingJob

from . import access, charts, privacy
from .auth import attempt_login
from .forms import STUDY_PRESETS, HospitalForm, StudyForm

Role = Membership.Role
LIVE_STATUSES = {Study.Status.RECRUITING, Study.Status.RUNNING, Study.Status.PAUSED}


# ---------------------------------------------------------------- helpers

def node_online(h: Hospital) -> bool:
    return (h.is_enrolled and h.last_heartbeat is not None
            and timezone.now() - h.last_heartbeat <= timedelta(seconds=settings.NODE_ONLINE_WINDOW_S))


def node_state(h: Hospital) -> str:
    if h.revoked_at is not None:
        return "revoked"
    if not h.token_hash:
        return "not enrolled"
    return "online" if node_online(h) else "offline"


def _roles_anywhere(user) -> set[str]:
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user).values_list("role", flat=True))


# ---------------------------------------------------------------- login / logout

@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request):
    nxt = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        nxt = ""
    error, status = "", 200
    if request.method == "POST":
        user, error = attempt_login(request, request.POST.get("username", ""), request.POST.get("password", ""))
        if user is not None:
            login(request, user)
            return redirect(nxt or settings.LOGIN_REDIRECT_URL)
        status = 429 if "locked" in error else 200
    return render(request, "portal/login.html", {"error": error, "next": nxt,
                                                 "username": request.POST.get("username", "")}, status=status)


@require_POST
def logout_view(request):
    logout(request)
    return redirect("portal:login")


# ---------------------------------------------------------------- dashboard

@login_required
@require_GET
def dashboard(request):
    user = request.user
    studies = list(access.visible_studies(user).select_related("consortium").order_by("-created_at")[:100])
    own_h = access.admin_hospital_ids(user)
    rows = []
    for s in studies:
        roles = access.roles_in(user, s.consortium_id)
        parts = s.participations.select_related("hospital")
        if not (roles - {Role.HOSPITAL_ADMIN}):
            parts = parts.filter(hospital_id__in=own_h)
        parts = list(parts)
        rows.append({"study": s, "progress": selectors.study_progress(s),
                     "approved": sum(p.state == Participation.State.APPROVED for p in parts),
                     "invited": len(parts), "parts": parts})
    hospitals = [{"h": h, "state": node_state(h)} for h in access.visible_hospitals(user).select_related("consortium")]
    roles = _roles_anywhere(user)
    inbox = 0
    if own_h:
        inbox = Participation.objects.filter(hospital_id__in=own_h, state=Participation.State.INVITED,
                                             study__status=Study.Status.RECRUITING).count()
    return render(request, "portal/dashboard.html", {
        "rows": rows, "hospitals": hospitals, "can_create": bool(roles & MANAGE_STUDY_ROLES),
        "inbox_count": inbox, "online_window": settings.NODE_ONLINE_WINDOW_S})


# ---------------------------------------------------------------- hospitals

@login_required
@require_http_methods(["GET", "POST"])
def hospitals(request):
    user = request.user
    admin_of = access.consortia_with_role(user, {Role.CONSORTIUM_ADMIN})
    if not access.member_consortia(user).exists():
        raise PermissionDenied("you are not a member of any consortium")
    form = HospitalForm(request.POST or None, consortia=admin_of)
    if request.method == "POST":
        if not admin_of.exists():
            raise PermissionDenied("only consortium admins create hospitals")
        if form.is_valid():
            d = form.cleaned_data
            h = consortia_services.hospital_create(consortium=d["consortium"], name=d["name"],
                                                   actor=actor_label(user=user), max_epsilon=d["max_epsilon"],
                                                   allowed_models=list(d["allowed_models"]))
            messages.success(request, f"Hospital {h.name} created. Create an enrolment token for its node below.")
            return redirect("portal:hospital", hospital_id=h.pk)
    rows = [{"h": h, "state": node_state(h)} for h in access.visible_hospitals(user).select_related("consortium")]
    return render(request, "portal/hospitals.html", {"rows": rows, "form": form, "can_create": admin_of.exists()},
                  status=422 if request.method == "POST" else 200)


def _node_toml_example(request, h: Hospital) -> str:
    models = h.allowed_models or ["logistic_regression", "mlp_classifier", "linear_regression", "mlp_regressor"]
    return (
        "# node.toml — kept next to the hospital's data; the node only makes outbound HTTPS calls\n"
        "[platform]\n"
        f'url = "{request.scheme}://{request.get_host()}"\n'
        'credentials_file = "credentials.json"   # written by `enrol`; keep it private (chmod 600)\n\n'
        "[data]\n"
        'csv = "/data/study/patients.csv"        # never leaves the hospital\n\n'
        "[node]\n"
        'ledger = "ledger.sqlite3"               # local privacy ledger (budget per study)\n'
        'work_dir = "work"\n'
        "poll_wait_s = 20\n\n"
        "[limits]                                # enforced by the node, whatever the platform asks\n"
        f"max_epsilon = {h.max_epsilon if h.max_epsilon is not None else 5.0}\n"
        "max_delta = 1e-5\n"
        f"allowed_models = {json.dumps(models)}\n"
        "auto_approve = false                    # approve each study in the portal\n"
        "max_rounds = 100\n")


@login_required
@require_GET
def hospital_detail(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    return _render_hospital(request, h, manage)


def _render_hospital(request, h, manage, token: str = "", status: int = 200):
    parts = Participation.objects.filter(hospital=h).select_related("study").order_by("-study__created_at")
    if not manage:
        parts = parts.exclude(study__status=Study.Status.DRAFT)   # drafts are not sent to hospitals yet
    parts = parts[:50]
    return render(request, "portal/hospital.html", {
        "h": h, "manage": manage, "state": node_state(h), "token": token, "parts": parts,
        "node_toml": _node_toml_example(request, h) if token else "",
        "tokens": h.enrolment_tokens.order_by("-created_at")[:10] if manage else []}, status=status)


@login_required
@require_POST
def hospital_token(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins create enrolment tokens")
    _, token = consortia_services.enrolment_token_create(hospital=h, user=request.user)
    resp = _render_hospital(request, h, manage, token=token)
    resp["Cache-Control"] = "no-store"   # the token is shown once; never cache the page holding it
    return resp


@login_required
@require_POST
def hospital_revoke(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins revoke nodes")
    consortia_services.node_revoke(hospital=h, actor=actor_label(user=request.user))
    messages.success(request, f"The node of {h.name} is revoked: its token no longer works. Enrol it again with a new token.")
    return redirect("portal:hospital", hospital_id=h.pk)


# ---------------------------------------------------------------- studies

@login_required
@require_http_methods(["GET", "POST"])
def study_new(request):
    consortia = access.consortia_with_role(request.user, MANAGE_STUDY_ROLES)
    if not consortia.exists():
        raise PermissionDenied("only researchers and consortium admins define studies")
    form = StudyForm(request.POST or None, consortia=consortia)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            d = form.cleaned_data
            try:
                study = services.study_create(
                    consortium=d["consortium"], name=d["name"], purpose=d["purpose"], hospitals=list(d["hospitals"]),
                    schema=d["schema"], model_spec=d["model_spec"], rounds=d["rounds"], local_epochs=d["local_epochs"],
                    batch_size=d["batch_size"], learning_rate=d["learning_rate"],
                    privacy={"epsilon": d["epsilon"], "delta": d["delta"], "clip_norm": d["clip_norm"]},
                    encryption=d["encryption"], quorum=d["quorum"], round_deadline_s=d["round_deadline_s"],
                    owner=request.user, actor=actor_label(user=request.user))
            except SpecError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Study created as a draft. Check what the privacy budget implies, then start it.")
                sizes = privacy.parse_sizes(d.get("dataset_sizes"))
                return redirect(reverse("portal:study", args=[study.pk]) + "?sizes=" + ",".join(map(str, sizes)))
        status = 422
    enc_desc = []
    for key, label, enc in form.presets:
        desc = get_codec(enc["codec"]).describe(enc)
        enc_desc.append({"key": key, "label": label, "desc": {k: desc[k] for k in (
            "scheme", "poly_modulus_degree", "security_level_bits", "quant_bits", "max_hospitals") if k in desc}})
    return render(request, "portal/study_new.html", {"form": form, "presets": STUDY_PRESETS,
                                                     "presets_json": json.dumps(STUDY_PRESETS), "enc_desc": enc_desc},
                  status=status)


@login_required
@require_GET
def privacy_preview(request):
    """HTML fragment: noise multipliers implied by a budget (used live by the new-study form)."""
    if not access.consortia_with_role(request.user, MANAGE_STUDY_ROLES).exists():
        raise PermissionDenied
    try:
        eps = float(request.GET["epsilon"])
        delta = float(request.GET["delta"])
        batch = int(request.GET["batch_size"])
        rounds = int(request.GET["rounds"])
        epochs = int(request.GET["local_epochs"])
        if not (0 < eps <= 100 and 0 < delta <= 0.1 and 1 <= batch <= 100_000 and 1 <= rounds <= MAX_ROUNDS
                and 1 <= epochs <= MAX_LOCAL_EPOCHS):
            raise ValueError
    except (KeyError, ValueError):
        return HttpResponse('<p class="muted">Fill in ε, δ, batch size, rounds and local epochs to see the noise they imply.</p>')
    table = privacy.budget_table(epsilon=eps, delta=delta, batch_size=batch, rounds=rounds, epochs=epochs,
                                 sizes=privacy.parse_sizes(request.GET.get("sizes")))
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
           "has_reports": RoundReport.objects.filter(round__study=study).exists()}
    if study.status == Study.Status.DRAFT:
        ctx["privacy_table"] = privacy.budget_table(
            epsilon=study.epsilon, delta=study.delta, batch_size=study.batch_size, rounds=study.rounds,
            epochs=study.local_epochs, sizes=privacy.parse_sizes(request.GET.get("sizes")), accountant=study.accountant)
    return render(request, "portal/study.html", ctx)


@login_required
@require_GET
def study_live(request, study_id: int):
    """Fragment polled every 2 s while a study is live: the round timeline and a change key."""
    scope = access.study_scope(request.user, study_id)
    study = scope.study
    resp = render(request, "portal/_timeline.html", {
        "s": study, "rounds": _round_rows(scope), "progress": selectors.study_progress(study)})
    resp["X-Study-Status"] = study.status
    resp["X-Live-Key"] = _live_key(scope)
    resp["Cache-Control"] = "no-store"
    return resp


def _metrics_data(scope):
    reps = scope.filter_hospital(RoundReport.objects.filter(round__study=scope.study).select_related("round", "hospital"))
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
    try:
        ACTIONS[action](study=scope.study, actor=actor_label(user=request.user))
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        done = {"start": "Recruitment opened: the invited hospitals now see the study.", "pause": "Study paused.",
                "resume": "Study resumed.", "cancel": "Study cancelled."}[action]
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


def _model_card_ctx(scope):
    study = scope.study
    fm = getattr(study, "final_model", None)
    spends = _spend_data(scope)
    last_spend: dict[str, dict] = {}
    for d in sorted(spends, key=lambda d: d["round"]):
        last_spend[d["hospital"]] = d
    reports = []
    if fm is not None:
        last = selectors.done_round(study, fm.round_number)
        if last is not None:
            reports = list(scope.filter_hospital(RoundReport.objects.filter(round=last).select_related("hospital"))
                           .order_by("hospital__name"))
    approved = [p for p in scope.participations() if p.state == Participation.State.APPROVED]
    last_spend = dict(sorted(last_spend.items()))
    return {"s": study, "scope": scope, "fm": fm, "sites": approved, "spend": last_spend, "reports": reports,
            "enc": get_codec(study.encryption["codec"]).describe(study.encryption),
            "generated": timezone.now()}


@login_required
@require_GET
def model_card(request, study_id: int):
    scope = access.study_scope(request.user, study_id)
    ctx = _model_card_ctx(scope)
    if request.GET.get("format") == "md":
        text = render(request, "portal/model_card.md", ctx).content
        return HttpResponse(text, content_type="text/markdown; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="study_{scope.study.pk}_model_card.md"'})
    return render(request, "portal/model_card.html", ctx)


# ---------------------------------------------------------------- hospital admin inbox

def _require_hospital_admin(user) -> set[int]:
    ids = access.admin_hospital_ids(user)
    if not ids:
        raise PermissionDenied("the inbox is for hospital admins")
    return ids


@login_required
@require_GET
def inbox(request):
    ids = _require_hospital_admin(request.user)
    base = Participation.objects.filter(hospital_id__in=ids).exclude(study__status=Study.Status.DRAFT) \
        .select_related("study", "hospital").order_by("-study__created_at")
    pending = [p for p in base if p.state == Participation.State.INVITED and p.study.status == Study.Status.RECRUITING]
    decided = [p for p in base if p not in pending]
    return render(request, "portal/inbox.html", {"pending": pending, "decided": decided[:50]})


def _local_checks(p: Participation) -> list[dict]:
    s, h = p.study, p.hospital
    checks = []
    if h.max_epsilon is None:
        checks.append({"ok": None, "text": "No maximum ε declared for this hospital in the portal; the node's own "
                                            "[limits] max_epsilon still applies."})
    else:
        checks.append({"ok": s.epsilon <= h.max_epsilon,
                       "text": f"Study budget ε={s.epsilon:g} vs this hospital's cap ε={h.max_epsilon:g}: "
                               + ("within the cap." if s.epsilon <= h.max_epsilon else
                                  "ABOVE the cap — the node will refuse any job that would spend beyond it.")})
    mt = s.model_spec.get("type")
    if not h.allowed_models:
        checks.append({"ok": None, "text": f"Model {mt}: no allowed-model list declared in the portal; the node's "
                                            "[limits] allowed_models still applies."})
    else:
        ok = mt in h.allowed_models
        checks.append({"ok": ok, "text": f"Model {mt}: " + ("allowed" if ok else "NOT allowed")
                       + f" (allowed here: {', '.join(h.allowed_models)})."})
    return checks


@login_required
@require_http_methods(["GET", "POST"])
def invitation(request, participation_id: int):
    ids = _require_hospital_admin(request.user)
    p = get_object_or_404(Participation.objects.select_related("study", "hospital", "study__consortium")
                          .exclude(study__status=Study.Status.DRAFT), pk=participation_id, hospital_id__in=ids)
    if request.method == "POST":
        decision = request.POST.get("decision", "")
        try:
            services.participation_decide(participation=p, decision=decision, actor=actor_label(user=request.user),
                                          reason=request.POST.get("reason", "")[:2000])
        except services.ServiceError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{p.hospital.name} {'approved' if decision == 'approve' else 'declined'} "
                                      f"study {p.study.name}.")
        return redirect("portal:invitation", participation_id=p.pk)
    s = p.study
    return render(request, "portal/invitation.html", {
        "p": p, "s": s, "checks": _local_checks(p), "config_json": json.dumps(selectors.study_config(s), indent=2),
        "enc": get_codec(s.encryption["codec"]).describe(s.encryption),
        "can_decide": p.state == Participation.State.INVITED and s.status == Study.Status.RECRUITING,
        "n_features": len(s.schema.get("features", []))})

"""Read-only audit views: the study audit report (HTML, PDF), the chain export and the trail.

Who may read: auditors and consortium admins of the study's consortium (report, export, trail);
researchers of that consortium may read the report. Anyone else gets 404, as if the study did not
exist, so study ids of other consortia are not disclosed.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from consortia.selectors import AUDIT_ROLES, Role, consortia_of, roles_in
from studies.models import Study

from . import report, selectors
from .management.commands.audit_export import export_lines
from .services import stream_for

REPORT_ROLES = AUDIT_ROLES | {Role.RESEARCHER}
PAGE_SIZE = 50


def _study_for(request, study_id: int, roles) -> Study:
    study = get_object_or_404(Study.objects.select_related("consortium", "owner"), pk=study_id)
    if not roles_in(request.user, study.consortium_id) & set(roles):
        raise Http404("no such study")
    return study


@require_GET
@login_required
def study_report(request, study_id: int):
    study = _study_for(request, study_id, REPORT_ROLES)
    ctx = report.build_context(study)
    ctx["can_audit"] = bool(roles_in(request.user, study.consortium_id) & AUDIT_ROLES)
    return HttpResponse(report.render_html(study, request=request, context=ctx))


@require_GET
@login_required
def study_report_pdf(request, study_id: int):
    study = _study_for(request, study_id, REPORT_ROLES)
    try:
        pdf = report.render_pdf(study)
    except report.PdfUnavailable as exc:
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    resp = HttpResponse(pdf, content_type="application/pdf")
    resp["Content-Disposition"] = f'attachment; filename="study-{study.pk}-audit-report.pdf"'
    return resp


@require_GET
@login_required
def study_export(request, study_id: int):
    """The study's chain as JSON Lines (same bytes as `manage.py audit_export`)."""
    study = _study_for(request, study_id, AUDIT_ROLES)
    resp = StreamingHttpResponse((line + "\n" for line in export_lines(stream_for(study.pk))),
                                 content_type="application/x-ndjson")
    resp["Content-Disposition"] = f'attachment; filename="study-{study.pk}-audit.jsonl"'
    return resp


def _int_param(request, name: str) -> int | None:
    v = request.GET.get(name, "").strip()
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise Http404(f"{name} must be a number") from None


@require_GET
@login_required
def trail(request):
    """The audit trail of the consortia the user audits; ?study=ID (one chain, in order) or ?consortium=ID."""
    study_id, consortium_id = _int_param(request, "study"), _int_param(request, "consortium")
    qs = selectors.trail_for(request.user, study_id=study_id, consortium_id=consortium_id)
    if qs is None:
        raise Http404("no such study or consortium")
    auditable = [c for c in consortia_of(request.user) if roles_in(request.user, c.pk) & AUDIT_ROLES]
    if not auditable and study_id is None and consortium_id is None and not request.user.is_superuser:
        raise Http404("you audit no consortium")
    study = Study.objects.filter(pk=study_id).first() if study_id else None
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"ev": ev, "data": json.dumps(ev.data, sort_keys=True, ensure_ascii=False)} for ev in page]
    ctx = {"page": page, "rows": rows, "study": study, "consortium_id": consortium_id,
           "chain": selectors.verify_study_chain(study.pk) if study else None,
           "studies": Study.objects.filter(consortium__in=auditable).order_by("-created_at")[:200]}
    return render(request, "audit/trail.html", ctx)

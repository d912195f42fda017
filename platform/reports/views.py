"""Read-only audit views: the study audit report (HTML, PDF), the chain export and the trail.

Who may read is decided by studies.access: the report is for the researchers, auditors and
consortium admins of the study's consortium; the export and the trail for its auditors and
consortium admins. A study the user cannot see answers 404 (ids of other consortia are not
disclosed); a study they see without the role answers 403.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.management.commands.audit_export import export_lines
from audit.selectors import verify_study_chain
from audit.services import stream_for
from studies import access
from studies.models import Study

from . import report, selectors

PAGE_SIZE = 50


def _report_scope(request, study_id: int) -> access.StudyScope:
    scope = access.study_scope(request.user, study_id)
    if not scope.can_report:
        raise PermissionDenied("only the consortium's researchers, auditors and admins read the audit report")
    return scope


@require_GET
@login_required
def study_report(request, study_id: int):
    scope = _report_scope(request, study_id)
    ctx = report.build_context(scope.study)
    ctx["can_audit"] = scope.can_audit
    return HttpResponse(report.render_html(scope.study, request=request, context=ctx))


@require_GET
@login_required
def study_report_pdf(request, study_id: int):
    study = _report_scope(request, study_id).study
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
    scope = access.study_scope(request.user, study_id)
    if not scope.can_audit:
        raise PermissionDenied("only auditors and consortium admins export the audit chain")
    study = scope.study
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
    scope = access.trail_scope(request.user, study_id=_int_param(request, "study"),
                               consortium_id=_int_param(request, "consortium"))
    page = Paginator(selectors.trail_events(scope), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"ev": ev, "data": json.dumps(ev.data, sort_keys=True, ensure_ascii=False)} for ev in page]
    study = scope.study
    ctx = {"page": page, "rows": rows, "study": study, "consortium_id": scope.consortium_id,
           "chain": verify_study_chain(study.pk) if study else None,
           "studies": Study.objects.filter(consortium__in=access.auditable_consortia(request.user))
                                   .order_by("-created_at")[:200]}
    return render(request, "reports/trail.html", ctx)

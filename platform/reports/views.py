"""Read-only audit views: the study audit report (HTML, PDF), the chain export and the trail.

Who may read is decided by studies.access: the report is for the researchers, auditors and
consortium admins of the study's consortium; the export and the trail for its auditors and
consortium admins. A study the user cannot see answers 404 (ids of other consortia are not
disclosed); a study they see without the role answers 403.
"""

from __future__ import annotations

import datetime
import json
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_GET

from audit.management.commands.audit_export import export_lines
from audit.models import AuditEvent
from audit.selectors import verify_study_chain
from audit.services import stream_for
from consortia.models import Hospital
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


def _time_param(request, name: str, *, end: bool = False):
    """A date (YYYY-MM-DD, UTC; as an ``end``, the whole day is included) or datetime
    (YYYY-MM-DDTHH:MM, UTC) filter; None when empty."""
    v = request.GET.get(name, "").strip()
    if not v:
        return None
    try:
        d = parse_date(v)   # a date first: parse_datetime would also read "2026-12-06" (as midnight)
        parsed = (datetime.datetime.combine(d + datetime.timedelta(days=1) if end else d, datetime.time())
                  if d is not None else parse_datetime(v))
    except ValueError:
        parsed = None
    if parsed is None:
        raise TrailFilterError(f"{name}: {v[:40]!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM)")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, datetime.timezone.utc)


class TrailFilterError(ValueError):
    pass


@require_GET
@login_required
def trail(request):
    """The audit trail of the consortia the user audits; ?study=ID (one chain, in order) or
    ?consortium=ID; filters: action (an event type, or a family such as ``study.``), hospital=ID
    (of the consortia shown, else 404), since/until (UTC). A malformed time: 400, saying why."""
    scope = access.trail_scope(request.user, study_id=_int_param(request, "study"),
                               consortium_id=_int_param(request, "consortium"))
    hospital_id = _int_param(request, "hospital")
    hospital = access.trail_hospital(request.user, scope, hospital_id) if hospital_id is not None else None
    action = request.GET.get("action", "").strip()[:64]
    status, error = 200, None
    events = selectors.trail_events(scope)
    try:
        since, until = _time_param(request, "since"), _time_param(request, "until", end=True)
    except TrailFilterError as exc:
        status, error, since, until = 400, str(exc), None, None
        events = events.none()
    actions = sorted(set(events.order_by().values_list("action", flat=True).distinct()))
    events = selectors.trail_filter(events, action=action, hospital_id=hospital_id, since=since, until=until)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"ev": ev, "data": json.dumps(ev.data, sort_keys=True, ensure_ascii=False)} for ev in page]
    study = scope.study
    keep = {k: request.GET.get(k, "").strip() for k in ("study", "consortium", "action", "hospital", "since", "until")}
    audited = access.auditable_consortia(request.user)
    ctx = {"page": page, "rows": rows, "study": study, "consortium_id": scope.consortium_id,
           "chain": verify_study_chain(study.pk) if study else None,
           "studies": Study.objects.filter(consortium__in=audited).order_by("-created_at")[:200],
           "hospitals": Hospital.objects.filter(consortium__in=audited).order_by("name"),
           "actions": actions, "action": action, "hospital": hospital, "error": error,
           "f": keep, "query": urlencode({k: v for k, v in keep.items() if v})}
    return render(request, "reports/trail.html", ctx, status=status)


@require_GET
@login_required
def event_detail(request, event_id: int):
    """One audit event: every field, its data in full, the hash link to the event before it in its
    stream (checked here), and the events before and after it."""
    ev = AuditEvent.objects.filter(pk=event_id).first()
    access.check_audit_event(request.user, ev)
    prev = AuditEvent.objects.filter(stream=ev.stream, seq=ev.seq - 1).first()
    nxt = AuditEvent.objects.filter(stream=ev.stream, seq=ev.seq + 1).first()
    linked = (prev.hash == ev.prev_hash) if prev is not None else (ev.seq == 1)
    study = Study.objects.filter(pk=ev.study_id).first() if ev.study_id else None
    hospital = Hospital.objects.filter(pk=ev.hospital_id).first() if ev.hospital_id else None
    return render(request, "reports/event.html", {
        "ev": ev, "data": json.dumps(ev.data, sort_keys=True, indent=2, ensure_ascii=False), "prev": prev,
        "next": nxt, "linked": linked, "study": study, "hospital": hospital})

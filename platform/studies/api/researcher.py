"""REST API for researchers and admins (session auth; object-level checks by consortium role)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.services import actor_label
from consortia.models import Consortium, Hospital
from consortia.selectors import MANAGE_STUDY_ROLES as MANAGE_ROLES
from consortia.selectors import roles_in

from .. import selectors, services
from ..models import Study
from .errors import error


class StudyCreateSerializer(serializers.Serializer):
    consortium_id = serializers.IntegerField()
    name = serializers.CharField(max_length=200)
    purpose = serializers.CharField(required=False, allow_blank=True, default="")
    hospital_ids = serializers.ListField(child=serializers.IntegerField(), min_length=1)
    schema = serializers.JSONField()
    model = serializers.JSONField()
    rounds = serializers.IntegerField()
    local_epochs = serializers.IntegerField()
    batch_size = serializers.IntegerField()
    learning_rate = serializers.FloatField()
    privacy = serializers.JSONField()
    encryption = serializers.JSONField(required=False, default=dict)
    quorum = serializers.IntegerField()
    round_deadline_s = serializers.IntegerField(required=False, default=600)
    seed = serializers.IntegerField(required=False, allow_null=True, default=None)


def study_summary(study: Study) -> dict:
    return {**selectors.study_config(study), "status": study.status, "status_reason": study.status_reason,
            "progress": selectors.study_progress(study),
            "participants": [{"hospital_id": p.hospital_id, "hospital": p.hospital.name, "state": p.state,
                              "decided_by": p.decided_by, "decided_at": p.decided_at}
                             for p in study.participations.select_related("hospital")],
            "final_model_sha256": getattr(getattr(study, "final_model", None), "sha256", None)}


class StudyListView(APIView):
    @extend_schema(summary="Studies visible to you")
    def get(self, request):
        studies = selectors.studies_visible_to(request.user).select_related("consortium")
        return Response({"studies": [{"id": s.pk, "name": s.name, "status": s.status, "consortium": s.consortium.name,
                                      "progress": selectors.study_progress(s)} for s in studies]})

    @extend_schema(request=StudyCreateSerializer, summary="Define a study (draft)")
    def post(self, request):
        s = StudyCreateSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        d = s.validated_data
        consortium = Consortium.objects.filter(pk=d["consortium_id"]).first()
        if consortium is None or not (roles_in(request.user, consortium.pk) & MANAGE_ROLES):
            return error("no such consortium, or you may not define studies in it", "not_found", 404)
        hospitals = list(Hospital.objects.filter(pk__in=d["hospital_ids"], consortium=consortium))
        if len(hospitals) != len(set(d["hospital_ids"])):
            return error("hospital_ids must all be hospitals of this consortium", "invalid", 422)
        study = services.study_create(
            consortium=consortium, name=d["name"], purpose=d["purpose"], hospitals=hospitals, schema=d["schema"],
            model_spec=d["model"], rounds=d["rounds"], local_epochs=d["local_epochs"], batch_size=d["batch_size"],
            learning_rate=d["learning_rate"], privacy=d["privacy"], encryption=d["encryption"], quorum=d["quorum"],
            round_deadline_s=d["round_deadline_s"], owner=request.user, seed=d["seed"],
            actor=actor_label(user=request.user))
        return Response(study_summary(study), status=201)


class StudyDetailView(APIView):
    def get(self, request, study_id: int):
        study = get_object_or_404(selectors.studies_visible_to(request.user), pk=study_id)
        return Response(study_summary(study))


class StudyActionView(APIView):
    ACTIONS = {"start": services.study_open_recruitment, "pause": services.study_pause,
               "resume": services.study_resume, "cancel": services.study_cancel}

    def post(self, request, study_id: int, action: str):
        study = get_object_or_404(selectors.studies_visible_to(request.user), pk=study_id)
        if action not in self.ACTIONS:
            return error(f"unknown action {action!r}; use one of {', '.join(self.ACTIONS)}", "not_found", 404)
        if not (roles_in(request.user, study.consortium_id) & MANAGE_ROLES):
            return error("only researchers and consortium admins manage studies", "forbidden", 403)
        self.ACTIONS[action](study=study, actor=actor_label(user=request.user))
        study.refresh_from_db()
        return Response(study_summary(study))


class FinalModelDownloadView(APIView):
    def get(self, request, study_id: int):
        study = get_object_or_404(selectors.studies_visible_to(request.user), pk=study_id)
        fm = getattr(study, "final_model", None)
        if fm is None:
            return error("the final model is not released yet", "not_ready", 409)
        services.final_model_downloaded(study=study, actor=actor_label(user=request.user))
        resp = FileResponse(open(Path(settings.MEDIA_ROOT) / fm.path, "rb"), as_attachment=True,
                            filename=f"study_{study.pk}_model.safetensors", content_type="application/octet-stream")
        resp["X-Model-SHA256"] = fm.sha256
        return resp

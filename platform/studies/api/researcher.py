"""REST API for researchers and admins (session auth; who may see and do what: studies.access)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.services import actor_label
from consortia.models import Hospital
from consortia.selectors import study_limit_conflicts
from fedproto.specs import TASKS
from fedproto.tuning import AUTO_FIELDS, STUDY_PRESETS, apply_auto

from .. import access, results, schema_draft, selectors, services
from ..benefit import benefit_rows
from . import schemas as S
from .errors import error


class StudyCreateSerializer(serializers.Serializer):
    consortium_id = serializers.IntegerField()
    name = serializers.CharField(max_length=200)
    purpose = serializers.CharField(required=False, allow_blank=True, default="")
    hospital_ids = serializers.ListField(child=serializers.IntegerField(), min_length=1)
    schema = serializers.JSONField()
    model = serializers.JSONField()
    rounds = serializers.IntegerField(required=False, allow_null=True, default=None)
    local_epochs = serializers.IntegerField(required=False, allow_null=True, default=None)
    batch_size = serializers.IntegerField(required=False, allow_null=True, default=None,
                                         help_text="rows per DP-SGD step; 0: all of each hospital's rows")
    learning_rate = serializers.FloatField(required=False, allow_null=True, default=None)
    settings = serializers.ChoiceField(choices=["manual", "auto", *STUDY_PRESETS], required=False, default="manual",
                                       help_text="auto: rounds, local epochs, batch size, learning rate and clip "
                                                 "norm chosen from dataset_sizes (fedproto.tuning); a preset: its "
                                                 "values, the batch scaled to dataset_sizes")
    dataset_sizes = serializers.ListField(child=serializers.IntegerField(), required=False, allow_null=True,
                                          default=None, help_text="the hospitals' expected rows (settings auto)")
    evaluation = serializers.JSONField(required=False, default=None,
                                       help_text='{"holdout": "auto" | fraction, "local_baseline": true|false}')
    datasets = serializers.JSONField(required=False, default=None,
                                     help_text='the data set each node uses: a name for all hospitals, or {"default": '
                                               'NAME, "hospitals": {"<hospital id>": NAME}}; a name is a '
                                               '[datasets.NAME] table of the node config (letters, digits, _ . -), '
                                               'never a path; default "default"')
    privacy = serializers.JSONField()
    encryption = serializers.JSONField(required=False, default=dict)
    quorum = serializers.IntegerField()
    round_deadline_s = serializers.IntegerField(required=False, default=600)
    recruitment_window_s = serializers.IntegerField(
        required=False, default=7 * 24 * 3600, min_value=10, max_value=90 * 24 * 3600,
        help_text="recruitment closes this long after the study starts recruiting: it then runs with the "
                  "hospitals that hold its key (quorum permitting), the others withdrawn, or fails naming whom "
                  "it waited for")
    seed = serializers.IntegerField(required=False, allow_null=True, default=None)


def study_summary(scope: access.StudyScope) -> dict:
    """The study as the user sees it: a hospital admin sees only their own hospital's participation."""
    study = scope.study
    return {**selectors.study_config(study), "status": study.status, "status_reason": study.status_reason,
            "progress": selectors.study_progress(study),
            "recruitment_window_s": study.recruitment_window_s,
            "recruitment": scope.recruitment(),
            "participants": [{"hospital_id": p.hospital_id, "hospital": p.hospital.name, "state": p.state,
                              "decided_by": p.decided_by, "decided_at": p.decided_at}
                             for p in scope.participations()],
            "final_model_sha256": getattr(getattr(study, "final_model", None), "sha256", None),
            "collaboration_benefit": benefit_rows(study, scope),
            "data_preparation": selectors.data_preparation(study),
            "release_blocked": scope.release_block(),
            "release_override": ({"at": study.release_override_at, "by": study.release_override_by}
                                 if study.release_override_at else None)}


class StudyListView(APIView):
    @S.user_op(response=S.STUDY_LIST, summary="Studies visible to you", operation_id="studies_list")
    def get(self, request):
        studies = access.visible_studies(request.user).select_related("consortium")
        return Response({"studies": [{"id": s.pk, "name": s.name, "status": s.status, "consortium": s.consortium.name,
                                      "progress": selectors.study_progress(s)} for s in studies]})

    @S.user_op(request=StudyCreateSerializer, response=S.STUDY_SUMMARY, status=201, summary="Define a study (draft)",
               operation_id="studies_create")
    def post(self, request):
        s = StudyCreateSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        d = dict(s.validated_data)
        consortium = access.consortium_for_new_study(request.user, d["consortium_id"])
        if d["settings"] != "manual":
            model_type = d["model"].get("type") if isinstance(d["model"], dict) else None
            d, privacy = apply_auto(d, d["privacy"], d["dataset_sizes"], model_type, d["settings"])
            d["privacy"] = privacy
        missing = [k for k in AUTO_FIELDS if d.get(k) is None]
        if missing:
            return error(f"{', '.join(missing)} required (or \"settings\": \"auto\" with dataset_sizes)",
                         "invalid", 422)
        hospitals = list(Hospital.objects.filter(pk__in=d["hospital_ids"], consortium=consortium))
        if len(hospitals) != len(set(d["hospital_ids"])):
            return error("hospital_ids must all be hospitals of this consortium", "invalid", 422)
        privacy, model = d["privacy"], d["model"]
        if isinstance(privacy, dict) and isinstance(model, dict) and isinstance(model.get("type"), str) \
                and all(isinstance(privacy.get(k, 0.0), (int, float)) for k in ("epsilon", "delta")):
            conflicts = study_limit_conflicts(hospitals, epsilon=float(privacy.get("epsilon", 0.0)),
                                              delta=float(privacy.get("delta", 0.0)), rounds=d["rounds"],
                                              model_type=model["type"])
            if conflicts:
                return error("these hospitals would refuse this study (their nodes decline what exceeds their "
                             "limits): " + " | ".join(conflicts), "exceeds_hospital_limits", 422)
        study = services.study_create(
            consortium=consortium, name=d["name"], purpose=d["purpose"], hospitals=hospitals, schema=d["schema"],
            model_spec=d["model"], rounds=d["rounds"], local_epochs=d["local_epochs"], batch_size=d["batch_size"],
            learning_rate=d["learning_rate"], privacy=d["privacy"], encryption=d["encryption"], quorum=d["quorum"],
            round_deadline_s=d["round_deadline_s"], owner=request.user, seed=d["seed"],
            evaluation=d["evaluation"], datasets=d["datasets"], recruitment_window_s=d["recruitment_window_s"],
            actor=actor_label(user=request.user))
        return Response(study_summary(access.scope_for(request.user, study)), status=201)


class StudyDetailView(APIView):
    @S.user_op(response=S.STUDY_SUMMARY, summary="One study", operation_id="studies_retrieve")
    def get(self, request, study_id: int):
        return Response(study_summary(access.study_scope(request.user, study_id)))


class StudyActionView(APIView):
    ACTIONS = {"start": services.study_open_recruitment, "pause": services.study_pause,
               "resume": services.study_resume, "cancel": services.study_cancel}

    # Resolving a blocked final-model release: consortium admins only.
    RELEASE_ACTIONS = {"rerun-evaluation": services.release_rerun_evaluation, "release-override": services.release_override}

    @S.user_op(request=None, response=S.STUDY_SUMMARY, parameters=S.STUDY_ACTION_PARAMETERS,
               operation_id="studies_action", summary="Start, pause, resume or cancel a study, or resolve a blocked release")
    def post(self, request, study_id: int, action: str):
        scope = access.study_scope(request.user, study_id)
        if action in self.RELEASE_ACTIONS:
            if not scope.can_resolve_release:
                services.release_resolution_refused(study=scope.study, actor=actor_label(user=request.user),
                                                    action=action)
                return error("only consortium admins resolve a blocked release", "forbidden", 403)
            self.RELEASE_ACTIONS[action](study=scope.study, actor=actor_label(user=request.user))
            scope.study.refresh_from_db()
            return Response(study_summary(scope))
        if action not in self.ACTIONS:
            names = [*self.ACTIONS, *self.RELEASE_ACTIONS]
            return error(f"unknown action {action!r}; use one of {', '.join(names)}", "not_found", 404)
        if not scope.can_manage:
            return error("only researchers and consortium admins manage studies", "forbidden", 403)
        self.ACTIONS[action](study=scope.study, actor=actor_label(user=request.user))
        scope.study.refresh_from_db()
        return Response(study_summary(scope))


class FinalModelDownloadView(APIView):
    @S.user_op(response=S.BINARY, summary="Download the released final model (safetensors)")
    def get(self, request, study_id: int):
        scope = access.study_scope(request.user, study_id)
        study = scope.study
        fm = getattr(study, "final_model", None)
        if fm is None:
            return error("the final model is not released yet", "not_ready", 409)
        if not scope.can_download_model:
            return error("only the study's researchers, auditors and the hospitals that approved it download the model",
                         "forbidden", 403)
        services.final_model_downloaded(study=study, actor=actor_label(user=request.user))
        resp = FileResponse(open(Path(settings.MEDIA_ROOT) / fm.path, "rb"), as_attachment=True,
                            filename=f"study_{study.pk}_model.safetensors", content_type="application/octet-stream")
        resp["X-Model-SHA256"] = fm.sha256
        return resp


class StudyResultsView(APIView):
    @S.user_op(response=S.STUDY_RESULTS, summary="The study's results: one row per round report (metrics, ε spent)",
               operation_id="studies_results")
    def get(self, request, study_id: int):
        return Response(results.results_json(access.study_scope(request.user, study_id)))


class SchemaDraftSerializer(serializers.Serializer):
    sample = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                   max_length=schema_draft.MAX_SAMPLE_BYTES,
                                   help_text="the CSV header line, or a small sample CSV as text (or upload it as "
                                             "the multipart file field 'file')")
    file = serializers.FileField(required=False, help_text="multipart: a small sample CSV (at most "
                                                          f"{schema_draft.MAX_SAMPLE_BYTES} bytes)")
    task = serializers.ChoiceField(choices=list(TASKS), required=False, default="binary_classification")
    label = serializers.CharField(required=False, allow_blank=True, default="", max_length=128,
                                  help_text="the label column (default: guessed by name, else the last column)")
    time = serializers.CharField(required=False, allow_blank=True, default="", max_length=128,
                                 help_text="survival: the time column (default: guessed by name)")
    event = serializers.CharField(required=False, allow_blank=True, default="", max_length=128,
                                  help_text="survival: the event column (default: guessed by name)")
    consortium_id = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=2 ** 63 - 1,
                                             help_text="the consortium the study is for (checked: you must manage "
                                                       "studies there)")


class SchemaDraftView(APIView):
    """A data-schema draft from a CSV header or a small sample (studies/schema_draft.py). The sample is
    parsed in memory (uploads too: never a temporary file) and dropped; nothing of it is stored or logged."""

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [schema_draft.SampleUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    @S.user_op(request={"application/json": SchemaDraftSerializer, "multipart/form-data": SchemaDraftSerializer},
               response=S.SCHEMA_DRAFT, summary="Draft a data schema from a CSV header or a small sample",
               operation_id="studies_schema_draft")
    def post(self, request):
        s = SchemaDraftSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        d = s.validated_data
        if d["consortium_id"] is not None:
            access.consortium_for_new_study(request.user, d["consortium_id"])
        elif not access.consortia_with_role(request.user, access.MANAGE_STUDY_ROLES).exists():
            return error("only researchers and consortium admins draft study schemas", "forbidden", 403)
        if d.get("file") is not None and d.get("sample"):
            return error("give the sample as text or as a file, not both", "invalid", 422)
        try:
            data = schema_draft.upload_bytes(d["file"]) if d.get("file") is not None else d.get("sample", "")
            if not data:
                return error("give the CSV header line or a small sample (sample, or the file field 'file')",
                             "invalid", 422)
            draft = schema_draft.draft_schema(data, task=d["task"], label=d["label"], time=d["time"],
                                              event=d["event"])
        except schema_draft.DraftError as exc:
            return error(str(exc), "too_large" if exc.too_large else "invalid", 413 if exc.too_large else 422)
        return Response(draft)

"""OpenAPI documentation of the node and researcher API bodies (drf-spectacular).

The views parse their bodies themselves (the protocol is older than the schema); these serializers
only describe them, so that clients and the API fuzzer (tests/studies/test_api_fuzz.py) know each
request and answer. docs/PROTOCOL.md is the prose version.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="what is wrong and how to fix it")
    code = serializers.CharField(help_text="a stable slug, e.g. invalid, not_found, wrong_state")


def _errors(*statuses: int) -> dict:
    return {s: OpenApiResponse(ErrorSerializer, description="the protocol's JSON error") for s in statuses}


BINARY = OpenApiTypes.BINARY
_NODE_ERRORS = (401, 403, 404, 405, 409, 413, 415, 422)
_USER_ERRORS = (401, 403, 404, 405, 409, 413, 415, 422)


def node_op(*, request=None, response=None, status: int = 200, summary: str = "", parameters=None, **kw):
    """extend_schema for a node endpoint: its body, its answer and the protocol's errors."""
    return extend_schema(request=request, responses={status: response, **_errors(*_NODE_ERRORS)}, summary=summary,
                         parameters=parameters, tags=["node"], **kw)


def user_op(*, request=None, response=None, status: int = 200, summary: str = "", **kw):
    return extend_schema(request=request, responses={status: response, **_errors(*_USER_ERRORS)}, summary=summary,
                         tags=["studies"], **kw)


ENROL_RESPONSE = inline_serializer("EnrolResponse", {
    "hospital_id": serializers.IntegerField(), "hospital_name": serializers.CharField(),
    "node_token": serializers.CharField(), "protocol_version": serializers.IntegerField()})
HEARTBEAT_REQUEST = inline_serializer("HeartbeatRequest", {
    "node_version": serializers.CharField(required=False, max_length=64),
    "status": serializers.DictField(required=False, help_text="free-form node status")})
HEARTBEAT_RESPONSE = inline_serializer("HeartbeatResponse", {
    "server_time": serializers.DateTimeField(), "protocol_version": serializers.IntegerField()})
WORK_PARAMETERS = [
    OpenApiParameter("wait", float, description="seconds to wait for work (long-poll), at most 30", required=False),
    OpenApiParameter("skip", str, description="comma-separated item keys the node already has in hand", required=False),
]
WORK_RESPONSE = inline_serializer("WorkResponse", {"items": serializers.ListField(child=serializers.DictField())})
DECISION_REQUEST = inline_serializer("DecisionRequest", {
    "decision": serializers.ChoiceField(["approve", "decline"]),
    "reason": serializers.CharField(required=False, allow_blank=True, max_length=2000)})
DECISION_RESPONSE = inline_serializer("DecisionResponse", {
    "study_id": serializers.IntegerField(), "state": serializers.CharField(), "key_custodian": serializers.BooleanField()})
CONTEXT = inline_serializer("HEContext", {
    "codec": serializers.CharField(), "public_params": serializers.CharField(help_text="base64"),
    "sha256": serializers.CharField()})
CONTEXT_REQUEST = inline_serializer("HEContextPublish", {
    "codec": serializers.CharField(), "public_params": serializers.CharField(help_text="base64")})
SHA256_RESPONSE = inline_serializer("Sha256Response", {"sha256": serializers.CharField()})
SEALED_KEYS_REQUEST = inline_serializer("SealedKeysRequest", {"keys": serializers.ListField(
    child=inline_serializer("SealedKeyItem", {"hospital_id": serializers.IntegerField(),
                                              "sealed": serializers.CharField(help_text="base64")}), min_length=1)})
SEALED_KEYS_RESPONSE = inline_serializer("SealedKeysResponse", {"stored": serializers.IntegerField()})
SEALED_KEY_RESPONSE = inline_serializer("SealedKeyResponse", {
    "sealed": serializers.CharField(help_text="base64"), "custodian_public_key": serializers.CharField(allow_null=True)})
KEY_ACK_REQUEST = inline_serializer("KeyAckRequest", {"public_params_sha256": serializers.CharField()})
OK_RESPONSE = inline_serializer("OkResponse", {"ok": serializers.BooleanField()})
REFUSE_REQUEST = inline_serializer("RefuseRequest", {
    "reason": serializers.CharField(), "code": serializers.CharField(required=False)})
JOB_STATUS_RESPONSE = inline_serializer("JobStatusResponse", {
    "job_id": serializers.IntegerField(), "status": serializers.CharField()})
PRIVACY_SPEND_REQUEST = inline_serializer("PrivacySpendRequest", {
    "epsilon": serializers.FloatField(), "delta": serializers.FloatField(),
    "noise_multiplier": serializers.FloatField(), "sample_rate": serializers.FloatField(),
    "steps": serializers.IntegerField(), "clip_norm": serializers.FloatField(),
    "accountant": serializers.CharField(), "accountant_version": serializers.CharField(),
    "epsilon_round": serializers.FloatField(required=False, allow_null=True),
    "dp_engine": serializers.CharField(required=False)})
PRIVACY_SPEND_RESPONSE = inline_serializer("PrivacySpendResponse", {
    "job_id": serializers.IntegerField(), "epsilon": serializers.FloatField()})
UPDATE_PARAMETERS = [OpenApiParameter(
    "X-Privacy-Spend", str, OpenApiParameter.HEADER, required=False,
    description="the job's privacy spend as a JSON object (the fields of POST jobs/{job_id}/privacy-spend)")]
UPDATE_RESPONSE = inline_serializer("UpdateResponse", {
    "job_id": serializers.IntegerField(), "sha256": serializers.CharField(), "bytes": serializers.IntegerField(),
    "privacy_spend_recorded": serializers.BooleanField()})
ROUND_REPORT_REQUEST = inline_serializer("RoundReportRequest", {
    "metrics": serializers.DictField(required=False), "n_test": serializers.IntegerField(required=False),
    "model_sha256": serializers.CharField(required=False),
    "epsilon_spent": serializers.FloatField(required=False, allow_null=True),
    "local_only": serializers.DictField(required=False, allow_null=True,
                                        help_text="final round: the local-only baseline (metrics, n_train, n_test, "
                                                  "epsilon, noise_multiplier, sample_rate, steps)")})
ROUND_REPORT_RESPONSE = inline_serializer("RoundReportResponse", {
    "round": serializers.IntegerField(), "model_sha256": serializers.CharField()})

STUDY_SUMMARY = inline_serializer("StudySummary", {
    "id": serializers.IntegerField(), "name": serializers.CharField(), "status": serializers.CharField(),
    "status_reason": serializers.CharField(), "progress": serializers.DictField(),
    "participants": serializers.ListField(child=serializers.DictField()),
    "final_model_sha256": serializers.CharField(allow_null=True)})
STUDY_LIST = inline_serializer("StudyList", {"studies": serializers.ListField(child=inline_serializer("StudyListItem", {
    "id": serializers.IntegerField(), "name": serializers.CharField(), "status": serializers.CharField(),
    "consortium": serializers.CharField(), "progress": serializers.DictField()}))})
STUDY_ACTION_PARAMETERS = [OpenApiParameter("action", str, OpenApiParameter.PATH,
                                            enum=["start", "pause", "resume", "cancel", "rerun-evaluation",
                                                  "release-override"])]
ROUND_UPLOADS_RESPONSE = inline_serializer("RoundUploads", {
    "round": serializers.IntegerField(),
    "uploads": serializers.ListField(child=inline_serializer("RoundUpload", {
        "job_id": serializers.IntegerField(), "sha256": serializers.CharField(), "bytes": serializers.IntegerField()})),
})
POISON_REPORT_REQUEST = inline_serializer("PoisonReportRequest", {
    "aggregate_sha256": serializers.CharField(help_text="SHA-256 (hex) of the aggregate that did not decrypt"),
    "budgets": serializers.DictField(child=serializers.IntegerField(),
                                     help_text="job id -> noise budget (bits) of that upload under the study key"),
    "error": serializers.CharField(required=False, help_text="the node's decryption error, at most 500 characters"),
})
POISON_REPORT_RESPONSE = inline_serializer("PoisonReportResponse", {
    "round": serializers.IntegerField(), "status": serializers.CharField(),
    "aggregate_sha256": serializers.CharField()})
STUDY_RESULTS = inline_serializer("StudyResults", {
    "study": serializers.DictField(help_text="id, name, status, rounds, epsilon, delta, model"),
    "final_model_sha256": serializers.CharField(allow_null=True),
    "columns": serializers.ListField(child=serializers.CharField(),
                                     help_text="round, attempt, hospital, n_test, epsilon_spent, metric.<name>..., "
                                               "model_sha256, reported_at"),
    "rows": serializers.ListField(child=serializers.DictField(), help_text="one per round report, keyed by column")})
SECAGG_MESSAGE = inline_serializer("SecAggMessage", {
    "round": serializers.IntegerField(), "attempt": serializers.IntegerField(),
    "round_index": serializers.IntegerField()})
SECAGG_REQUEST = inline_serializer("SecAggStageRequest", {
    "message": serializers.DictField(help_text="the stage's fedproto.secagg message (to_dict form)")})
SCHEMA_DRAFT = inline_serializer("SchemaDraftResult", {
    "task": serializers.CharField(),
    "schema": serializers.DictField(help_text="the drafted data schema (validated), for the researcher to confirm"),
    "columns": serializers.ListField(child=serializers.DictField(), help_text="per column: name, type (float, int, "
                                     "bool, categorical, ordinal, text = left out), missing_values, range, "
                                     "categories, levels, note"),
    "label_candidates": serializers.ListField(child=serializers.CharField(), required=False),
    "survival": serializers.DictField(required=False, help_text="survival: time and event column candidates"),
    "notes": serializers.ListField(child=serializers.CharField())})

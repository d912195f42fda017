"""The node API: thin views over services/selectors. A node sees and touches only its own objects."""

from __future__ import annotations

import base64
import binascii
import threading
import time

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import close_old_connections, connection
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from audit.services import actor_label
from consortia.models import Hospital
from consortia.services import EnrolmentError, node_enrol, node_heartbeat
from fedproto import PROTOCOL_VERSION
from fedproto.study import WorkKind

from .. import selectors, services, worksignal
from ..models import Participation, Study, TrainingJob
from . import limits
from . import schemas as S
from .auth import IsNode, NodeTokenAuthentication
from .errors import error
from .parsers import loads_strict


def _b64(value, field: str) -> bytes:
    if not isinstance(value, str):
        raise services.ServiceError(f"{field} must be a base64 string", code="invalid", status=422)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise services.ServiceError(f"{field} is not valid base64", code="invalid", status=422) from None


# Node requests that may use the database at once in this web process. Hundreds of nodes hold a
# long-poll each and wake together when a round opens; without a bound they would open hundreds of
# PostgreSQL connections (max_connections is typically 100). A long-poll gives its slot back (and
# closes its connection) while it waits.
DB_SLOTS = threading.BoundedSemaphore(settings.WEB_DB_SLOTS)


class _Slot:
    """This request's hold on a DB_SLOTS slot (taken and given back at most once each way)."""

    def __init__(self) -> None:
        self.held = False

    def acquire(self) -> None:
        if not self.held:
            DB_SLOTS.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            DB_SLOTS.release()


class _SlotFreeBody:
    """A streamed request body read without a database slot: the first read gives the slot (and the
    connection) back, the end of the body takes one again before the view's next query. A slow
    sender then holds a web thread (the reverse proxy buffers bodies in production), never a slot."""

    def __init__(self, raw, slot: _Slot, length: int):
        self.raw, self.slot, self.left = raw, slot, max(0, length)

    def read(self, n: int = -1) -> bytes:
        if self.slot.held and not connection.in_atomic_block:
            connection.close()
            self.slot.release()
        chunk = self.raw.read(n)
        self.left -= len(chunk)
        if not chunk or self.left <= 0:
            self.slot.acquire()
        return chunk


class DbSlotMixin:
    """Holds a database slot while the view runs, not while its body arrives: a JSON body is read
    whole (bounded by DATA_UPLOAD_MAX_MEMORY_SIZE) before the slot is taken; a streamed body (a view
    without parsers) is read through _SlotFreeBody."""

    def dispatch(self, request, *args, **kwargs):
        if getattr(self, "parser_classes", None):
            try:
                request.body  # noqa: B018 - read the whole body now, before taking a slot
            except RequestDataTooBig:
                return JsonResponse({"error": f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
                                     "code": "too_large"}, status=413)
        slot = request.db_slot = _Slot()
        slot.acquire()
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            close_old_connections()
            slot.release()


class NodeView(DbSlotMixin, APIView):
    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsNode]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Every parsed node request body is a JSON object (streamed bodies have no parsers).
        if self.parser_classes and request.method in ("POST", "PUT", "PATCH") and not isinstance(request.data, dict):
            raise services.ServiceError("send the request body as a JSON object", code="invalid", status=422)

    @property
    def hospital(self):
        return self.request.auth

    def streamed_body(self, length: int) -> _SlotFreeBody:
        """The request body of a view without parsers, read as a stream without a database slot."""
        return _SlotFreeBody(self.request._request, self.request._request.db_slot, length)

    def my_study(self, study_id: int) -> Study:
        """A study this node participates in; 404 otherwise (no existence leak)."""
        return get_object_or_404(Study.objects.select_related("consortium"), pk=study_id,
                                 participations__hospital=self.hospital)

    def actor(self) -> str:
        return actor_label(hospital=self.hospital)


class EnrolSerializer(serializers.Serializer):
    enrolment_token = serializers.CharField(max_length=200)
    public_key = serializers.CharField(max_length=64)
    node_version = serializers.CharField(max_length=64, required=False, default="")


class EnrolThrottle(AnonRateThrottle):
    # Per client address; a benchmark enrolling hundreds of nodes from one host raises it.
    rate = settings.ENROL_RATE


class EnrolView(DbSlotMixin, APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [EnrolThrottle]

    @extend_schema(request=EnrolSerializer, responses={201: S.ENROL_RESPONSE, **S._errors(403, 405, 413, 415, 422, 429)},
                   summary="Enrol a node with a one-time enrolment token", tags=["node"])
    def post(self, request):
        s = EnrolSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        try:
            hospital, token = node_enrol(enrolment_token=s.validated_data["enrolment_token"],
                                         public_key=s.validated_data["public_key"],
                                         node_version=s.validated_data["node_version"])
        except EnrolmentError as exc:
            return error(str(exc), "enrolment_refused", 403)
        return Response({"hospital_id": hospital.pk, "hospital_name": hospital.name, "node_token": token,
                         "protocol_version": PROTOCOL_VERSION}, status=201)


class HeartbeatView(NodeView):
    @S.node_op(request=S.HEARTBEAT_REQUEST, response=S.HEARTBEAT_RESPONSE, summary="Report that the node is alive")
    def post(self, request):
        d = request.data if isinstance(request.data, dict) else {}
        node_heartbeat(hospital=self.hospital, node_version=limits.text(d.get("node_version"), "node_version",
                                                                        limits.MAX_NODE_VERSION),
                       status=limits.heartbeat_status(d.get("status")))
        return Response({"server_time": timezone.now().isoformat(), "protocol_version": PROTOCOL_VERSION})


class WorkView(NodeView):
    """Long-poll: returns as soon as there is work, or an empty list after `wait` seconds."""

    @S.node_op(response=S.WORK_RESPONSE, parameters=S.WORK_PARAMETERS, summary="Long-poll for work items")
    def get(self, request):
        try:
            wait = float(request.query_params.get("wait", "20"))
        except ValueError:
            return error("wait must be a number of seconds", "invalid", 422)
        wait = max(0.0, min(wait, settings.NODE_LONGPOLL_MAX_S))
        skip_raw = request.query_params.get("skip", "")
        skip = frozenset(k for k in skip_raw.split(",") if k)
        if len(skip) > 1000:
            return error("skip lists at most 1000 item keys", "invalid", 422)
        deadline = time.monotonic() + wait
        # Recompute the items only when a state change was committed since the last look (the work
        # signal), or every NODE_LONGPOLL_RECHECK_S as a safety net; between looks the poll holds
        # no database connection and costs nothing.
        sig_key = worksignal.hospital_key(self.hospital.pk)
        seen = worksignal.current(sig_key)
        last_full = time.monotonic()
        while True:
            # Each look is a contact: a node waiting in a long poll is online (NODE_ONLINE_WINDOW_S).
            Hospital.objects.filter(pk=self.hospital.pk).update(last_heartbeat=timezone.now())
            items = selectors.work_items_for(self.hospital, skip)
            if items:
                selectors.jobs_mark_claimed([i["job_id"] for i in items if i["kind"] == WorkKind.TRAIN])
                return Response({"items": items})
            now = time.monotonic()
            if now >= deadline:
                return Response({"items": items})
            close_old_connections()
            last_full = now
            DB_SLOTS.release()  # waiting needs no database: let other requests use the slot
            try:
                seen = self._wait(sig_key, seen, deadline, last_full)
            finally:
                DB_SLOTS.acquire()

    @staticmethod
    def _wait(sig_key: str, seen, deadline: float, last_full: float):
        """Until the work signal changes, the safety recheck is due, or the deadline; the new version."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return seen
            recheck_s = settings.NODE_LONGPOLL_RECHECK_S
            nxt = worksignal.wait_change(sig_key, seen, min(left, recheck_s - (time.monotonic() - last_full)))
            if nxt != seen or time.monotonic() - last_full >= recheck_s:
                return nxt


class DecisionView(NodeView):
    @S.node_op(request=S.DECISION_REQUEST, response=S.DECISION_RESPONSE, summary="Approve or decline a study")
    def post(self, request, study_id: int):
        study = self.my_study(study_id)
        p = get_object_or_404(Participation, study=study, hospital=self.hospital)
        d = request.data if isinstance(request.data, dict) else {}
        reason = limits.text(d.get("reason"), "reason", limits.MAX_DECISION_REASON)
        p = services.participation_decide(participation=p, decision=d.get("decision"), actor=self.actor(), reason=reason)
        custodian_id = Study.objects.filter(pk=study.pk).values_list("custodian_id", flat=True).first()
        return Response({"study_id": study.pk, "state": p.state, "key_custodian": custodian_id == self.hospital.pk})


class ContextView(NodeView):
    @S.node_op(response=S.CONTEXT, summary="The study's public HE context")
    def get(self, request, study_id: int):
        study = self.my_study(study_id)
        ctx = services.he_context_fetch(study=study, hospital=self.hospital)
        return Response({"codec": ctx.codec, "public_params": base64.b64encode(bytes(ctx.public_params)).decode(),
                         "sha256": ctx.sha256})

    @S.node_op(request=S.CONTEXT_REQUEST, response=S.SHA256_RESPONSE, status=201,
               summary="Publish the HE context (key custodian)")
    def post(self, request, study_id: int):
        study = self.my_study(study_id)
        blob = _b64(request.data.get("public_params"), "public_params")
        codec_name = limits.text(request.data.get("codec"), "codec", 64)
        ctx = services.he_context_publish(study=study, hospital=self.hospital, codec_name=codec_name,
                                          public_params=blob)
        return Response({"sha256": ctx.sha256}, status=201)


class SealedKeysView(NodeView):
    @S.node_op(request=S.SEALED_KEYS_REQUEST, response=S.SEALED_KEYS_RESPONSE, status=201,
               summary="Store sealed study keys (key custodian)")
    def post(self, request, study_id: int):
        study = self.my_study(study_id)
        keys = request.data.get("keys")
        if not isinstance(keys, list) or not keys:
            return error('keys must be a non-empty list of {"hospital_id", "sealed"}', "invalid", 422)
        parsed = []
        for k in keys:
            if not isinstance(k, dict) or not isinstance(k.get("hospital_id"), int):
                return error("each key needs an integer hospital_id and a base64 sealed value", "invalid", 422)
            parsed.append((k["hospital_id"], _b64(k.get("sealed"), "sealed")))
        n = services.sealed_keys_store(study=study, hospital=self.hospital, keys=parsed)
        return Response({"stored": n}, status=201)


class SealedKeyView(NodeView):
    @S.node_op(response=S.SEALED_KEY_RESPONSE, summary="This node's sealed study key")
    def get(self, request, study_id: int):
        study = self.my_study(study_id)
        sk = services.sealed_key_fetch(study=study, hospital=self.hospital)
        return Response({"sealed": base64.b64encode(bytes(sk.sealed)).decode(),
                         "custodian_public_key": study.custodian.public_key if study.custodian else None})


class KeyAckView(NodeView):
    @S.node_op(request=S.KEY_ACK_REQUEST, response=S.OK_RESPONSE, summary="Acknowledge the study key")
    def post(self, request, study_id: int):
        study = self.my_study(study_id)
        services.key_ack(study=study, hospital=self.hospital,
                         public_params_sha256=limits.text(request.data.get("public_params_sha256"), "public_params_sha256",
                                                          limits.MAX_SHA256_FIELD))
        return Response({"ok": True})


class JobMixin:
    def my_job(self, job_id: int) -> TrainingJob:
        return get_object_or_404(TrainingJob.objects.select_related("round", "round__study"), pk=job_id,
                                 hospital=self.hospital)


class RefuseView(JobMixin, NodeView):
    @S.node_op(request=S.REFUSE_REQUEST, response=S.JOB_STATUS_RESPONSE, summary="Refuse a training job")
    def post(self, request, job_id: int):
        job = self.my_job(job_id)
        d = request.data if isinstance(request.data, dict) else {}
        reason = limits.text(d.get("reason"), "reason", limits.MAX_REFUSAL_REASON).strip()
        if not reason:
            return error("give a reason for refusing the job", "invalid", 422)
        code = limits.text(d.get("code"), "code", limits.MAX_REFUSAL_CODE, default="refused")
        job = services.job_refuse(job=job, hospital=self.hospital, reason=reason, code=code)
        return Response({"job_id": job.pk, "status": job.status})


class PrivacySpendView(JobMixin, NodeView):
    @S.node_op(request=S.PRIVACY_SPEND_REQUEST, response=S.PRIVACY_SPEND_RESPONSE, status=201,
               summary="Record a job's privacy spend")
    def post(self, request, job_id: int):
        job = self.my_job(job_id)
        if not isinstance(request.data, dict):
            return error("send a JSON object", "invalid", 422)
        ps = services.privacy_spend_record(job=job, hospital=self.hospital, spend=dict(request.data))
        return Response({"job_id": job.pk, "epsilon": ps.epsilon}, status=201)


class UpdateView(JobMixin, NodeView):
    parser_classes: list = []  # the body is streamed to disk, never parsed in memory

    @S.node_op(request={"application/octet-stream": S.BINARY}, response=S.UPDATE_RESPONSE, status=201,
               parameters=S.UPDATE_PARAMETERS, summary="Upload an encrypted update (a fedproto.wire frame)")
    def put(self, request, job_id: int):
        job = self.my_job(job_id)
        ctype = request.META.get("CONTENT_TYPE", "")
        if not ctype.startswith("application/octet-stream"):
            return error("send the encrypted update as application/octet-stream (a fedproto.wire frame)",
                         "unsupported_media_type", 415)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        spend_header = request.META.get("HTTP_X_PRIVACY_SPEND")
        if spend_header is not None:
            # The job's privacy spend may ride with its upload (one request instead of two); it is
            # recorded first, exactly as POST jobs/{id}/privacy-spend records it.
            try:
                spend = loads_strict(spend_header)  # NaN/Infinity: 422 naming the value
            except ValueError:
                spend = None
            if not isinstance(spend, dict):
                return error("X-Privacy-Spend must be a JSON object with the fields of POST jobs/{id}/privacy-spend",
                             "invalid", 422)
            services.privacy_spend_record(job=job, hospital=self.hospital, spend=spend)
        upd = services.update_accept(job=job, hospital=self.hospital, stream=self.streamed_body(length),
                                     content_length=length if length >= 0 else None)
        return Response({"job_id": job.pk, "sha256": upd.sha256, "bytes": upd.size_bytes,
                         "privacy_spend_recorded": spend_header is not None}, status=201)

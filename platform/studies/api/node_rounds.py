"""The node API, round by round: aggregates, the uploads a key holder checks when an aggregate does
not decrypt, round reports and the final model. The base view and the rest: api/node.py."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse
from rest_framework.response import Response

from .. import selectors, services
from . import limits
from . import schemas as S
from .errors import error
from .node import NodeView


class AggregateView(NodeView):
    @S.node_op(response=S.BINARY, summary="A round's encrypted aggregate")
    def get(self, request, study_id: int, number: int):
        study = self.my_study(study_id)
        agg = services.aggregate_fetch(study=study, hospital=self.hospital, number=number)
        resp = FileResponse(open(Path(settings.MEDIA_ROOT) / agg.path, "rb"), content_type="application/octet-stream")
        resp["X-Contributors"] = str(agg.n_contributors)
        resp["X-Aggregate-SHA256"] = agg.sha256
        return resp


class RoundUploadsView(NodeView):
    """The uploads in a round's aggregate, for a key holder whose aggregate does not decrypt."""

    @S.node_op(response=S.ROUND_UPLOADS_RESPONSE, operation_id="node_round_uploads_list",
               summary="The uploads of a round whose aggregate does not decrypt (key holders)")
    def get(self, request, study_id: int, number: int):
        study = self.my_study(study_id)
        ups = services.round_uploads(study=study, hospital=self.hospital, number=number)
        return Response({"round": number, "uploads": [{"job_id": u.job_id, "sha256": u.sha256, "bytes": u.size_bytes}
                                                      for u in ups]})


class RoundUploadView(NodeView):
    """One upload of a round's aggregate: a key holder checks its noise budget (decodes no value)."""

    @S.node_op(response=S.BINARY, operation_id="node_round_upload_retrieve",
               summary="One upload of a round, for a key holder's noise-budget check")
    def get(self, request, study_id: int, number: int, job_id: int):
        study = self.my_study(study_id)
        u = services.round_upload(study=study, hospital=self.hospital, number=number, job_id=job_id)
        resp = FileResponse(open(Path(settings.MEDIA_ROOT) / u.path, "rb"), content_type="application/octet-stream")
        resp["X-Upload-SHA256"] = u.sha256
        return resp


class PoisonReportView(NodeView):
    @S.node_op(request=S.POISON_REPORT_REQUEST, response=S.POISON_REPORT_RESPONSE,
               summary="Report an aggregate that does not decrypt, with each upload's noise budget")
    def post(self, request, study_id: int, number: int):
        study = self.my_study(study_id)
        d = request.data if isinstance(request.data, dict) else {}
        sha = d.get("aggregate_sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            return error("aggregate_sha256 must be the SHA-256 (hex) of the aggregate that did not decrypt", "invalid", 422)
        out = services.poison_report_record(study=study, hospital=self.hospital, number=number, aggregate_sha256=sha,
                                            budgets=d.get("budgets"), error=str(d.get("error", ""))[:500])
        return Response(out)


class RoundReportView(NodeView):
    @S.node_op(request=S.ROUND_REPORT_REQUEST, response=S.ROUND_REPORT_RESPONSE, status=201,
               summary="Report a round's evaluation")
    def post(self, request, study_id: int, number: int):
        study = self.my_study(study_id)
        services.require_approved(study, self.hospital, "report on a round")
        rnd = selectors.done_round(study, number)
        if rnd is None:
            return error(f"round {number} has no aggregate yet", "not_ready", 409)
        d = request.data if isinstance(request.data, dict) else {}
        eps = d.get("epsilon_spent")
        try:
            n_test = int(d.get("n_test", 0))
            eps = float(eps) if eps is not None else None
        except (TypeError, ValueError):
            return error("n_test must be an integer and epsilon_spent a number", "invalid", 422)
        rep = services.round_report_record(rnd=rnd, hospital=self.hospital, metrics=limits.metrics(d.get("metrics", {})),
                                           n_test=n_test, model_sha256=d.get("model_sha256", ""), epsilon_spent=eps,
                                           local_only=limits.local_only(d.get("local_only")),
                                           preprocessing=limits.preprocessing(d.get("preprocessing")))
        return Response({"round": number, "model_sha256": rep.model_sha256}, status=201)


class FinalModelView(NodeView):
    parser_classes: list = []

    @S.node_op(request={"application/octet-stream": S.BINARY}, response=S.SHA256_RESPONSE, status=201,
               summary="Upload the final model (key custodian)")
    def put(self, request, study_id: int):
        study = self.my_study(study_id)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length < 0:
            return error("send the model with a Content-Length header", "length_required", 411)
        if length > settings.MAX_MODEL_BYTES:
            return error(f"model is {length} bytes; the limit is {settings.MAX_MODEL_BYTES}", "too_large", 413)
        # The service checks the caller and the study's state before it reads a byte, then streams.
        fm = services.final_model_store(study=study, hospital=self.hospital, stream=self.streamed_body(length),
                                        content_length=length)
        return Response({"sha256": fm.sha256}, status=201)

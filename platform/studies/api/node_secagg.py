"""The node API of a distributed-DP round's secure-aggregation exchange (services/secagg.py,
docs/PROTOCOL.md "Distributed DP: the round exchange"). A body is a JSON object
{"message": <fedproto.secagg message, to_dict form>}, bounded in size per stage; every answer is
JSON except the correction (raw uint64 little endian); a stage that is not ready yet answers 409
{"code": "not_ready"} and the node asks again."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse
from rest_framework.response import Response

from .. import services
from ..services import secagg
from ..services.common import _audit_refusal
from . import schemas as S
from .node import NodeView

# Bytes of one sealed share (a SharePayload of ~420 bytes in a Box, base64, with its key) and of
# one unmask share (hex of a field element with its key): the bodies are bounded by these.
BOX_BYTES = 1024
SHARE_BYTES = 100
HEAD_BYTES = 2048


def _message(request, limit: int, study, hospital, number: int, stage: str) -> dict:
    """The stage's message from the body; a body too large or without one is refused, and audited."""
    if len(request.body) > limit:
        exc = services.ServiceError(f"the request body is {len(request.body)} bytes; this stage takes at most {limit}",
                                    code="too_large", status=413)
    elif not isinstance(request.data.get("message"), dict):
        exc = services.ServiceError('send {"message": <the stage\'s secure-aggregation message>}', code="invalid",
                                    status=422)
    else:
        return request.data["message"]
    _audit_refusal(study, "secagg.refused", hospital, str(exc), code=exc.code, stage=stage, round=number)
    raise exc


class _SecAggView(NodeView):
    def study(self, study_id: int):
        study = self.my_study(study_id)
        services.require_approved(study, self.hospital, "take part in the secure aggregation")
        return study

    def k(self, study) -> int:
        return study.participations.count()


class SecAggSetupView(_SecAggView):
    @S.node_op(response=S.SECAGG_MESSAGE, operation_id="node_secagg_setup",
               summary="A distributed round's secure-aggregation setup and the participants' node keys")
    def get(self, request, study_id: int, number: int):
        study = self.study(study_id)
        return Response(secagg.setup_fetch(study=study, hospital=self.hospital, number=number))


class SecAggAdvertView(_SecAggView):
    @S.node_op(request=S.SECAGG_REQUEST, response=S.SECAGG_MESSAGE, operation_id="node_secagg_advert",
               summary="Advertise this round's mask public key and self-mask commitment")
    def post(self, request, study_id: int, number: int):
        study = self.study(study_id)
        return Response(secagg.advert_record(study=study, hospital=self.hospital, number=number,
                                             advert=_message(request, HEAD_BYTES, study, self.hospital, number, "advert")))


class SecAggDirectoryView(_SecAggView):
    @S.node_op(response=S.SECAGG_MESSAGE, operation_id="node_secagg_directory",
               summary="The round's key directory (U0), once fixed")
    def get(self, request, study_id: int, number: int):
        study = self.study(study_id)
        return Response(secagg.directory_fetch(study=study, hospital=self.hospital, number=number))


class SecAggSharesView(_SecAggView):
    @S.node_op(request=S.SECAGG_REQUEST, response=S.SECAGG_MESSAGE, operation_id="node_secagg_shares",
               summary="Send this node's sealed Shamir shares, one per peer of the key directory")
    def post(self, request, study_id: int, number: int):
        study = self.study(study_id)
        limit = HEAD_BYTES + BOX_BYTES * self.k(study)
        return Response(secagg.shares_record(study=study, hospital=self.hospital, number=number,
                                             bundle=_message(request, limit, study, self.hospital, number, "shares")))


class SecAggInboxView(_SecAggView):
    @S.node_op(response=S.SECAGG_MESSAGE, operation_id="node_secagg_inbox",
               summary="The shares sealed to this node and U1, once the shares stage is closed")
    def get(self, request, study_id: int, number: int):
        study = self.study(study_id)
        return Response(secagg.inbox_fetch(study=study, hospital=self.hospital, number=number))


class SecAggUnmaskView(_SecAggView):
    @S.node_op(response=S.SECAGG_MESSAGE, operation_id="node_secagg_unmask_request",
               summary="The unmask request (survivors U2), once the round closed")
    def get(self, request, study_id: int, number: int):
        study = self.study(study_id)
        return Response(secagg.unmask_request_fetch(study=study, hospital=self.hospital, number=number))

    @S.node_op(request=S.SECAGG_REQUEST, response=S.SECAGG_MESSAGE, operation_id="node_secagg_unmask_response",
               summary="Send the shares of the dropped hospitals' mask keys and of the survivors' self-masks")
    def post(self, request, study_id: int, number: int):
        study = self.study(study_id)
        limit = HEAD_BYTES + 2 * SHARE_BYTES * self.k(study)
        return Response(secagg.unmask_record(study=study, hospital=self.hospital, number=number,
                                             response=_message(request, limit, study, self.hospital, number,
                                                                       "unmask")))


class SecAggCorrectionView(_SecAggView):
    @S.node_op(response=S.BINARY, operation_id="node_secagg_correction",
               summary="The correction to add (mod t) to the decrypted aggregate of a distributed round")
    def get(self, request, study_id: int, number: int):
        study = self.study(study_id)
        sa = secagg.correction_fetch(study=study, hospital=self.hospital, number=number)
        resp = FileResponse(open(Path(settings.MEDIA_ROOT) / sa.correction_path, "rb"),
                            content_type="application/octet-stream")
        resp["X-Correction-SHA256"] = sa.correction_sha256
        resp["X-Survivors"] = ",".join(str(h) for h in sa.u2 or [])
        return resp

"""Study services: every state change of a study happens here, in a transaction, with its audit
event. Tasks (studies/tasks.py) and the API/portal views call these functions; they never change
state themselves. Call sites use the package: ``from studies import services; services.study_create(...)``.

    lifecycle    definition, status changes, moving a study forward
    recruitment  decisions, encryption context, sealed keys, key acknowledgements
    recruitment_deadline  whom a recruiting study waits for; closing recruitment at its deadline
    rounds       open/close rounds, job refusals, encrypted uploads
    spend        privacy spends (checked: in range, cumulative, within budget; late; reused updates)
    aggregation  adding the ciphertexts (whole round or by chunk)
    poisoning    a poisoned aggregate: key holders' noise-budget reports, culprit excluded, re-aggregation
    release      round attestations, the final model
    storage      media files (atomic writes, verified reads, paths, chunk index)
    platform_clock  deadlines do not run while the platform itself is down
    common       audit event + node wake-up of a state change, tasks enqueued by name
"""

from .aggregation import missing_chunks, round_aggregate, round_aggregate_chunk
from .common import require_approved
from .errors import ServiceError
from .lifecycle import (
                        TERMINAL,
                        hospital_withdraw,
                        participation_withdraw,
                        study_advance,
                        study_cancel,
                        study_create,
                        study_fail,
                        study_open_recruitment,
                        study_pause,
                        study_resume,
                        study_update,
)
from .platform_clock import platform_away, platform_beat
from .poisoning import poison_report_record, round_upload, round_uploads
from .recruitment import he_context_fetch, he_context_publish, key_ack, participation_decide, sealed_key_fetch, sealed_keys_store
from .release import (
                        aggregate_fetch,
                        final_model_downloaded,
                        final_model_store,
                        release_override,
                        release_rerun_evaluation,
                        release_resolution_refused,
                        round_report_record,
)
from .rounds import job_refuse, round_open, round_try_close, update_accept
from .secagg import unmask_fail_stalled
from .spend import DP_ENGINE_RE, SPEND_FIELDS, privacy_spend_record

__all__ = [
    "DP_ENGINE_RE", "SPEND_FIELDS", "ServiceError", "TERMINAL", "aggregate_fetch", "final_model_downloaded",
    "final_model_store", "he_context_fetch", "he_context_publish", "hospital_withdraw", "job_refuse", "key_ack",
    "missing_chunks", "participation_decide", "participation_withdraw", "platform_away", "platform_beat", "poison_report_record",
    "privacy_spend_record", "release_override", "release_rerun_evaluation", "release_resolution_refused",
    "require_approved", "round_aggregate", "round_aggregate_chunk", "round_open", "round_report_record",
    "round_try_close", "round_upload", "round_uploads", "sealed_key_fetch", "sealed_keys_store", "study_advance", "study_update",
    "study_cancel", "study_create", "study_fail", "study_open_recruitment", "study_pause", "study_resume",
    "unmask_fail_stalled", "update_accept",
]

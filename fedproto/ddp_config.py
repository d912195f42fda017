"""Distributed-DP mode of a study: what it requires, the noise plan and the packing it implies.

A study in ``privacy.mode = "distributed"`` (fedproto/privacy.py) runs DP-FedSGD with secure
aggregation: per round every hospital sends ONE clipped, quantised gradient sum over all its
records plus a share N_Z(0, sigma_local^2) of discrete Gaussian noise, masked (fedproto.secagg)
and BFV-encrypted; only the sum over the survivors is ever decrypted. The guarantee (Kairouz,
Liu, Steinke, ICML 2021, arXiv:2102.06387) holds for the released sums as long as at most T
hospitals collude with the platform and at least the quorum Q survive (Q - T honest shares).

Everything here is a pure function of the study definition, so a node, the platform and an
auditor compute the same plan: the sampler's share of delta is sized for ``max_hospitals``
(not the round's participants), the dimension is the model's parameter count, the rounds the
study's. The packing reuses the codec's digit layout (bits per digit B, digits per slot k), so a
masked upload has exactly the size of a local-mode upload of the same study.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codec import get_codec
from .codec.bfv_packed import BfvPackedCodec
from .codec.bfv_params import HEADER_SLOTS, PLAIN_MODULUS, SLOTS, layout
from .dp import DistributedNoisePlan, plan_distributed_noise
from .errors import SpecError
from .secagg import PackingBounds, RoundSetup, SecAggError, min_threshold

if TYPE_CHECKING:  # pragma: no cover
    from .study import Privacy, StudyConfig

# Fewer hospitals than this take part: local DP (a sum of two is one subtraction from each update).
DDP_MIN_HOSPITALS = 3
DDP_CODECS = ("bfv-packed-v1", "bfv-packed-raw-v1")  # BFV with batching: masks mod t cancel exactly


def check_distributed(privacy: Privacy, quorum: int, n_hospitals: int | None, enc: dict[str, Any]) -> None:
    """The structural requirements of distributed mode (SpecError naming the fix)."""
    t = privacy.collusion
    if enc["codec"] not in DDP_CODECS:
        raise SpecError(f"distributed DP needs a BFV batching codec ({', '.join(DDP_CODECS)}): masks must cancel exactly "
                        f"modulo the plaintext modulus; encryption.codec is {enc['codec']!r}")
    if not 0 <= t < quorum:
        raise SpecError(f"privacy collusion T = {t} must be below the quorum Q = {quorum}: the guarantee rests on Q - T "
                        f"honest noise shares in every released sum")
    if n_hospitals is None:
        return
    if n_hospitals < DDP_MIN_HOSPITALS:
        raise SpecError(f"distributed DP needs at least {DDP_MIN_HOSPITALS} hospitals, {n_hospitals} are invited: use "
                        f"privacy mode local")
    thr = min_threshold(n_hospitals, t)
    if quorum < thr:
        raise SpecError(f"with {n_hospitals} hospitals and collusion T = {t} the Shamir threshold is {thr} "
                        f"(more than (K + T) / 2); the quorum {quorum} must be at least that: raise the quorum or lower T")


def bfv_codec(study: StudyConfig) -> BfvPackedCodec:
    """The study's codec, which distributed mode requires to be a BFV batching codec."""
    codec = get_codec(study.codec)
    if not isinstance(codec, BfvPackedCodec):
        raise SpecError(f"distributed DP needs a BFV batching codec ({', '.join(DDP_CODECS)}), not {study.codec!r}")
    return codec


def public_normaliser(study: StudyConfig) -> int:
    """N in the global step theta -= lr * gamma * S / (n_contributors * N): ``batch_size``, public, so
    the step reveals nothing about a hospital's record count (which is never sent in this mode)."""
    return study.batch_size


def noise_plan(study: StudyConfig) -> DistributedNoisePlan:
    """Each hospital's noise share for the study's (epsilon, delta) over all its rounds."""
    p = study.privacy
    if not p.distributed:
        raise SpecError("the study is in local-DP mode: it has no distributed noise plan")
    try:
        return plan_distributed_noise(target_epsilon=p.epsilon, delta=p.delta, clip=p.clip_norm, gamma=p.quant_step,
                                      dim=study.n_params, rounds=study.rounds, n_hospitals=study.encryption["max_hospitals"],
                                      quorum=study.quorum, collusion=p.collusion)
    except ValueError as exc:
        raise SpecError(f"distributed-DP noise plan: {exc}") from None


def packing(study: StudyConfig, plan: DistributedNoisePlan | None = None) -> PackingBounds:
    """The codec's digit layout with the largest per-coordinate clamp G that cannot wrap."""
    plan = plan or noise_plan(study)
    enc = study.encryption
    bits, per_slot = layout(enc)
    k_max = enc["max_hospitals"]
    g = ((1 << bits) - 1) // (2 * k_max) - plan.noise_bound
    need = int(plan.l2_sensitivity) + 1
    if g < need:
        raise SpecError(f"the codec's {bits}-bit digits leave a per-coordinate range of {max(g, 0)} for a hospital's sum, "
                        f"less than one record ({need}) beside noise of bound {plan.noise_bound}: raise encryption."
                        f"quant_bits (wider digits), lower max_hospitals, or raise privacy.quant_step")
    bounds = PackingBounds(PLAIN_MODULUS, k_max, g, plan.noise_bound, bits, per_slot)
    try:
        bounds.check()
    except SecAggError as exc:  # pragma: no cover - the layout already keeps k_max * 2^B digits below t
        raise SpecError(str(exc)) from None
    return bounds


def n_slots(study: StudyConfig) -> int:
    """Masked vector length: the codec's part count of the study times the slots per part."""
    bits, per_slot = layout(study.encryption)
    return max(1, -(-(HEADER_SLOTS + -(-study.n_params // per_slot)) // SLOTS)) * SLOTS


def round_setup(study: StudyConfig, round_index: int, participants: tuple[int, ...]) -> RoundSetup:
    """The secure-aggregation setup of one round (threshold from K and T, quorum from the study)."""
    t = study.privacy.collusion
    k = len(participants)
    try:
        return RoundSetup(str(study.study_id), round_index, participants, min_threshold(k, t), study.quorum, t,
                          PLAIN_MODULUS, n_slots(study))
    except SecAggError as exc:
        raise SpecError(f"round {round_index} cannot run in distributed mode with {k} participants: {exc}") from None


# Float slack when comparing an epsilon with a budget (as hospital_node.trainer.EPS_TOLERANCE).
EPS_TOLERANCE = 1e-9


def epsilon_after(study: StudyConfig, releases: int) -> float:
    """The distributed-DP epsilon of ``releases`` released sums under the study's plan (a node's
    cumulative epsilon after contributing to that many; the plan's epsilon after ``study.rounds``)."""
    return noise_plan(study).epsilon_after(releases)


def release_refusal(study: StudyConfig, released: int, max_epsilon: float | None = None) -> str | None:
    """Why a hospital that already contributed to ``released`` sums of the study must not contribute
    to one more (None: it may). The plan covers exactly ``study.rounds`` released sums, one per round;
    a retried round's failed attempt was one release too (its spend stays counted), so retries can
    use up the plan before the last round. A release beyond the plan, or one whose epsilon would
    pass the study budget or the hospital's ``max_epsilon``, is refused: the node never spends, nor
    records, budget the study does not have."""
    plan = noise_plan(study)
    budget = study.privacy.epsilon
    before, after = plan.epsilon_after(released), plan.epsilon_after(released + 1)
    tail = (f"(distributed DP, collusion threshold T = {plan.collusion}, {plan.honest_shares} honest noise shares per "
            f"released sum; delta={plan.delta:g})")
    if released + 1 > plan.rounds:
        return (f"this hospital already contributed to {released} released sums of this study (retried rounds "
                f"count once per attempt), the noise plan covers {plan.rounds}: one more would bring epsilon to "
                f"{after:.4f} (now {before:.4f}) against the study budget of {budget:g}, beyond what the plan "
                f"guarantees {tail}")
    if after > budget + EPS_TOLERANCE:
        return (f"contributing to this round's sum would bring epsilon to {after:.4f} (now {before:.4f}), over the "
                f"study budget of {budget:g} {tail}")
    if max_epsilon is not None and after > float(max_epsilon) + EPS_TOLERANCE:
        return (f"contributing to this round's sum would bring epsilon to {after:.4f} (now {before:.4f}), over this "
                f"hospital's cap max_epsilon={float(max_epsilon):g} {tail}")
    return None


def statement(study: StudyConfig, plan: DistributedNoisePlan | None = None) -> dict[str, Any]:
    """What the accountant, the ledger, the recomputation and the audit report say about the model."""
    p = study.privacy
    if not p.distributed:
        return {"privacy_model": "local", "collusion": None,
                "guarantee": "each hospital's update is (epsilon, delta)-DP on its own, against any coalition"}
    plan = plan or noise_plan(study)
    return {"privacy_model": "distributed", "collusion": p.collusion, "quorum": study.quorum,
            "honest_shares": plan.honest_shares, "local_sigma": plan.local_sigma, "central_sigma": plan.central_sigma,
            "epsilon": plan.epsilon, "delta": plan.delta, "rounds": plan.rounds,
            "mechanism": "DP-FedSGD, distributed discrete Gaussian (Kairouz, Liu, Steinke 2021)",
            "guarantee": f"the released sums are ({plan.epsilon:.4g}, {plan.delta:g})-DP for every hospital's records "
                         f"while at most T = {p.collusion} hospitals collude with the platform and at least Q = "
                         f"{study.quorum} survive each round"}

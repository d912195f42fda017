"""Federated statistics of a study: what each hospital contributes so that every hospital can
standardise and impute with the same global constants (docs/data.md, "Federated statistics").

Each hospital computes one vector of sums over its rows (``local_vector``) in the layout
``layout(schema)`` gives, adds Gaussian noise calibrated to the vector's L2 sensitivity and its
share of the privacy budget (``noisy_vector``; ``epsilon_of`` is the cost its ledger records), and
the vectors are summed (the encrypted aggregation of the rounds carries exactly such a float
vector). ``derive`` turns the sum into the global constants ``fedproto.preprocessing.build`` takes.

Slots (one row adds at most 1 to each; a row's whole contribution has an L2 norm of at most
``sensitivity(schema)``, so the Gaussian mechanism applies with add/remove-one-row adjacency):
  "n"                       1 per row;
  "<f>:missing"             1 when the cell is missing (every feature that allows missing values);
  "<f>:u", "<f>:u2"         v and v**2 of a present value, v = (clip(x, range) - low) / (high - low) - 1/2
                            in [-1/2, 1/2] (float/int features with a range: federated standardisation
                            or mean; centred, so a row adds at most 1/4 + 1/16 to the squared norm);
  "<f>:bin<k>"              1 when u falls into bin k of ``histogram_bins`` (median of float/int);
  "<f>=<value>"             1 per row with that level / category (ordinal median/mode, categorical
                            mode; categorical "other" counts as "<f>=__other__"), or with value 1 (bool mode);
  "label=<class>"           label counts (binary: "label=1"; multi-class: one per class; survival: "label=event").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .dp.accounting import rdp_to_epsilon
from .errors import SpecError
from .schema import (
    DEFAULT_EPSILON_SHARE,
    DEFAULT_HISTOGRAM_BINS,
    FEDERATED_STRATEGIES,
    OTHER,
    needs_statistics,
    scaling,
    validate_schema,
)

# The RDP orders of the accountant the nodes and the platform's recomputation use (Opacus'
# RDPAccountant.DEFAULT_ALPHAS): the statistics round's cost is exactly what the ledger records.
ACCOUNTANT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])

# A derived standard deviation is at least this share of the declared range: noise can make the
# variance estimate tiny or negative, and dividing by a tiny scale would blow the inputs up.
MIN_STD_OF_RANGE = 0.02


def _values(f: dict[str, Any]) -> list[str]:
    if f["type"] == "ordinal":
        return list(f["levels"])
    if f["type"] == "categorical":
        return list(f["categories"]) + ([OTHER] if f.get("other") else [])
    return ["1"]  # bool


def _needs_moments(f: dict[str, Any]) -> bool:
    return f["type"] in ("float", "int") and (scaling(f) == "federated" or f.get("missing") in ("mean", "median"))


def _needs_counts(f: dict[str, Any]) -> bool:
    return f["type"] in ("bool", "ordinal", "categorical") and f.get("missing") in FEDERATED_STRATEGIES


def _bins(schema: dict[str, Any]) -> int:
    return int(schema.get("statistics", {}).get("histogram_bins", DEFAULT_HISTOGRAM_BINS))


def layout(schema: dict[str, Any]) -> list[str]:
    """The slot names of a hospital's statistics vector, in order (see the module docstring)."""
    slots = ["n"]
    for f in schema["features"]:
        name = f["name"]
        if f.get("missing", "error") != "error":
            slots.append(f"{name}:missing")
        if _needs_moments(f):
            slots += [f"{name}:u", f"{name}:u2"]
            if f.get("missing") == "median":
                slots += [f"{name}:bin{k}" for k in range(_bins(schema))]
        elif _needs_counts(f):
            slots += [f"{name}={v}" for v in _values(f)]
    task = schema["task"]
    if task == "binary_classification":
        slots.append("label=1")
    elif task == "multiclass_classification":
        slots += [f"label={c}" for c in schema["label"]["classes"]]
    elif task == "survival":
        slots.append("label=event")
    return slots


def sensitivity(schema: dict[str, Any]) -> float:
    """L2 norm bound of one row's contribution: sqrt of the sum over the slot groups a row can touch
    ("n", each feature's missing/u/u2/bin/count group, the label) of their largest squared norm."""
    sq = 1.0  # "n"
    for f in schema["features"]:
        if _needs_moments(f):
            # present: v^2 + v^4 <= 1/4 + 1/16 (+ 1 bin); missing: 1 in ":missing" only
            present = 0.3125 + (1.0 if f.get("missing") == "median" else 0.0)
            sq += max(present, 1.0) if f.get("missing", "error") != "error" else present
        elif _needs_counts(f) or f.get("missing", "error") != "error":
            sq += 1.0  # one count or the missing slot, never both
    if schema["task"] != "regression":
        sq += 1.0
    return math.sqrt(sq)


def local_vector(schema: dict[str, Any], X_codes: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """The exact (not yet noised) statistics vector of this hospital's rows. ``X_codes``: feature
    codes [n, features] as hospital_node.data.load_csv returns them (NaN = missing); ``y`` the labels."""
    X = np.asarray(X_codes, dtype=np.float64)
    out: list[np.ndarray | float] = [float(len(X))]
    for j, f in enumerate(schema["features"]):
        col = X[:, j]
        miss = np.isnan(col)
        if f.get("missing", "error") != "error":
            out.append(float(miss.sum()))
        present = col[~miss]
        if _needs_moments(f):
            lo, hi = f["range"]
            u = (np.clip(present, lo, hi) - lo) / (hi - lo)
            v = u - 0.5
            out += [float(v.sum()), float((v * v).sum())]
            if f.get("missing") == "median":
                k = _bins(schema)
                out.append(np.bincount(np.minimum((u * k).astype(np.int64), k - 1), minlength=k).astype(np.float64))
        elif _needs_counts(f):
            codes = present.astype(np.int64)
            out.append(np.bincount(codes, minlength=len(_values(f)))[:len(_values(f))].astype(np.float64))
    task = schema["task"]
    if task != "regression":
        lab = np.asarray(y if y is not None else [], dtype=np.float64)
        if task == "binary_classification":
            out.append(float((lab == 1).sum()))
        elif task == "multiclass_classification":
            out.append(np.bincount(lab.astype(np.int64), minlength=len(schema["label"]["classes"])).astype(np.float64))
        else:
            out.append(float((lab.reshape(-1, 2)[:, 1] == 1).sum()) if lab.size else 0.0)
    return np.concatenate([np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in out])


def epsilon_of(noise_std: float, schema: dict[str, Any], delta: float) -> float:
    """The epsilon one noisy statistics vector costs its hospital (Gaussian mechanism, RDP)."""
    if not noise_std > 0:
        raise SpecError("the statistics noise must be > 0")
    z2 = (noise_std / sensitivity(schema)) ** 2
    return rdp_to_epsilon(ACCOUNTANT_ORDERS, [a / (2 * z2) for a in ACCOUNTANT_ORDERS], delta)[0]


def noise_for_epsilon(epsilon: float, schema: dict[str, Any], delta: float) -> float:
    """The smallest Gaussian noise std (within 1e-6, rounded up) whose cost is <= ``epsilon``."""
    if not epsilon > 0:
        raise SpecError(f"the statistics' epsilon must be > 0, got {epsilon!r}")
    lo, hi = 1e-6, 1.0
    while epsilon_of(hi, schema, delta) > epsilon:
        hi *= 2
        if hi > 1e9:
            raise SpecError(f"epsilon {epsilon:g} is too small for the federated statistics")
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon_of(mid, schema, delta) > epsilon else (lo, mid)
    return hi


def noisy_vector(schema: dict[str, Any], X_codes: np.ndarray, y: np.ndarray | None, *, epsilon: float, delta: float,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, float, float]:
    """(noisy vector, noise std, epsilon spent): what a hospital contributes for ``epsilon``."""
    std = noise_for_epsilon(epsilon, schema, delta)
    rng = rng or np.random.default_rng()
    vec = local_vector(schema, X_codes, y)
    return vec + rng.normal(0.0, std, size=vec.shape), std, epsilon_of(std, schema, delta)


def _median_of_histogram(hist: np.ndarray, lo: float, hi: float) -> float:
    hist = np.maximum(hist, 0.0)
    total = hist.sum()
    if total <= 0:
        return (lo + hi) / 2
    cum = np.cumsum(hist)
    k = int(np.searchsorted(cum, total / 2))
    before = cum[k - 1] if k else 0.0
    frac = (total / 2 - before) / hist[k] if hist[k] > 0 else 0.5
    width = (hi - lo) / len(hist)
    return float(lo + (k + min(max(frac, 0.0), 1.0)) * width)


def derive(schema: dict[str, Any], total: np.ndarray, *, n_hospitals: int | None = None) -> dict[str, Any]:
    """Global constants from the summed vector: per feature "missing_rate", and as the schema needs
    "mean" / "std" / "median" (float, int), "frequencies" / "mode" (bool, ordinal, categorical);
    "label_counts". Noisy sums are clamped to valid values (counts >= 0, std > 0, a mean inside
    the range), so a derived constant is always usable."""
    schema = validate_schema(schema)
    names = layout(schema)
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    if total.shape != (len(names),) or not np.isfinite(total).all():
        raise SpecError(f"the statistics aggregate has {total.size} finite values, the schema's layout {len(names)}")
    v = dict(zip(names, total.tolist()))
    n = max(v["n"], 1.0)
    feats: dict[str, dict[str, Any]] = {}
    for f in schema["features"]:
        name = f["name"]
        st: dict[str, Any] = {}
        missing = min(max(v.get(f"{name}:missing", 0.0), 0.0), n)
        st["missing_rate"] = missing / n
        present = max(n - missing, 1.0)
        if _needs_moments(f):
            lo, hi = f["range"]
            w = hi - lo
            mu_c = min(max(v[f"{name}:u"] / present, -0.5), 0.5)  # centred mean, in [-1/2, 1/2]
            var = max(v[f"{name}:u2"] / present - mu_c * mu_c, 0.0)
            st["mean"] = lo + (mu_c + 0.5) * w
            st["std"] = max(math.sqrt(var) * w, MIN_STD_OF_RANGE * w)
            if f.get("missing") == "median":
                hist = np.array([v[f"{name}:bin{k}"] for k in range(_bins(schema))])
                st["median"] = _median_of_histogram(hist, lo, hi)
            if f["type"] == "int":
                for key in ("mean", "median"):
                    if key in st and f.get("missing") == key:
                        st[key] = float(round(st[key]))
        elif _needs_counts(f):
            vals = _values(f)
            counts = np.maximum([v[f"{name}={x}"] for x in vals], 0.0)
            st["frequencies"] = dict(zip(vals, (counts / max(counts.sum(), 1.0)).tolist()))
            if f["type"] == "bool":
                st["mode"] = int(counts[0] >= present / 2)
            else:
                declared = vals[:-1] if vals[-1] == OTHER else vals  # "other" is no value to impute
                idx = int(np.argmax(counts[:len(declared)]))
                st["mode"] = declared[idx]
                if f["type"] == "ordinal":
                    cum = np.cumsum(counts)
                    st["median"] = vals[int(np.searchsorted(cum, cum[-1] / 2))] if cum[-1] > 0 else st["mode"]
        feats[name] = st
    labels = {k[len("label="):]: max(x, 0.0) for k, x in v.items() if k.startswith("label=")}
    out: dict[str, Any] = {"n": n, "features": feats, "label_counts": labels}
    if n_hospitals is not None:
        out["hospitals"] = int(n_hospitals)
    return out


# ----------------------------------------------------------------------------- the statistics round
#
# Round 0 of a study that needs federated statistics (``enabled``): every hospital computes its
# vector over its training rows, adds Gaussian noise (std = z * its L2 sensitivity), divides it by
# the public ``codec_scale`` and encrypts it with the study's codec (``encrypt_update`` with weight
# ``cap``, so every contributor weighs the same); the platform adds the ciphertexts like any
# round's; the key holders decrypt the sum (``from_codec``), check it (``check_total``) and derive
# the constants. The spend is one Gaussian mechanism: the accountant entry (z, 1.0, 1), composed
# with the training jobs' entries in the hospital's ledger and reported like a job's spend.

STATISTICS_ROUND = 0
NOISE_HEADROOM = 4.0  # codec_scale leaves room for this many noise stds above the largest count
SUSPECT_SIGMAS = 6.0  # check_total: a count further than this many noise stds above its bound is refused
MIN_COUNT_SIGMAS = 2.0  # check_total: a row count below this many noise stds is noise, refused


def enabled(schema: dict[str, Any]) -> bool:
    """True when the study runs the statistics round (round 0) before training."""
    return needs_statistics(schema)


def epsilon_share(schema: dict[str, Any]) -> float:
    return float(schema.get("statistics", {}).get("epsilon_share", DEFAULT_EPSILON_SHARE))


def round_length(schema: dict[str, Any], n_params: int, number: int) -> int:
    """The length of the vector every upload of round ``number`` encrypts: the statistics vector in
    round 0, the model's parameters in a training round."""
    return len(layout(schema)) if number == STATISTICS_ROUND else int(n_params)


def noise_multiplier(schema: dict[str, Any], epsilon_cap: float, delta: float) -> float:
    """z: the noise std per unit of L2 sensitivity for the round's share of ``epsilon_cap`` (the
    hospital's effective budget in the study). The same z for every hospital with the same cap."""
    eps = epsilon_share(schema) * float(epsilon_cap)
    return noise_for_epsilon(eps, schema, delta) / sensitivity(schema)


def spend_entry(schema: dict[str, Any], epsilon_cap: float, delta: float) -> tuple[float, float, int]:
    """The accountant entry (noise multiplier, sample rate, steps) of the statistics round: one
    Gaussian mechanism without subsampling, RDP alpha / (2 z^2), exactly as a DP-SGD step at q = 1."""
    return (noise_multiplier(schema, epsilon_cap, delta), 1.0, 1)


def contribution(schema: dict[str, Any], X_codes: np.ndarray, y: np.ndarray | None, *, z: float, cap: int,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, float]:
    """(noisy vector, its noise std) a hospital contributes: its exact vector over at most ``cap``
    rows' weight (a hospital with n > cap rows scales its vector by cap / n, which at most doubles a
    row's influence, so its noise is for twice the sensitivity) plus Gaussian noise z * sensitivity."""
    if not z > 0:
        raise SpecError("the statistics noise multiplier must be > 0")
    vec = local_vector(schema, X_codes, y)
    n = len(np.asarray(X_codes))
    sens = sensitivity(schema)
    if n > cap:
        vec = vec * (cap / n)
        sens *= 2.0
    std = float(z) * sens
    rng = rng or np.random.default_rng()
    return vec + rng.normal(0.0, std, size=vec.shape), std


def codec_scale(schema: dict[str, Any], *, z: float, cap: int, clip: float) -> float:
    """The public divisor that maps a contribution into the codec's clipping range [-clip, clip]:
    the largest honest slot (cap rows) plus NOISE_HEADROOM noise stds fit. The codec clips every
    slot there, which bounds what any one hospital, honest or not, adds to each sum."""
    return (float(cap) + NOISE_HEADROOM * float(z) * 2.0 * sensitivity(schema)) / float(clip)


def from_codec(mean_update: np.ndarray, n_contributors: int, scale: float) -> np.ndarray:
    """The summed (noisy) statistics vector from a decrypted aggregate (the codec returns the mean
    over contributors of equal weight)."""
    return np.asarray(mean_update, dtype=np.float64) * int(n_contributors) * float(scale)


def check_total(schema: dict[str, Any], total: np.ndarray, *, n_contributors: int, z: float, cap: int) -> None:
    """Refuse a summed vector that cannot come from honest hospitals (SpecError says why): a value
    that is not finite, a row count above n_contributors * cap by more than SUSPECT_SIGMAS noise
    stds (of the larger noise of a hospital over cap rows), or a count below MIN_COUNT_SIGMAS noise
    stds of the sum, too small for the noise to leave anything usable."""
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    if total.shape != (len(layout(schema)),):
        raise SpecError(f"the statistics aggregate has {total.size} values, the schema's layout {len(layout(schema))}")
    if not np.isfinite(total).all():
        raise SpecError("the statistics aggregate has values that are not finite numbers")
    sigma = float(z) * sensitivity(schema) * math.sqrt(max(int(n_contributors), 1))
    n = float(total[0])
    if n > n_contributors * cap + SUSPECT_SIGMAS * 2.0 * sigma:
        raise SpecError(f"the statistics count {n:.0f} rows, more than {n_contributors} hospitals of at most {cap} rows "
                        "each can have: a contribution is out of range")
    slack = SUSPECT_SIGMAS * 2.0 * sigma
    for name, x in zip(layout(schema)[1:], total[1:].tolist()):
        if name.endswith(":u"):
            lo, hi = -n / 2, n / 2  # each row adds v in [-1/2, 1/2]
        elif name.endswith(":u2"):
            lo, hi = 0.0, n / 4
        else:
            lo, hi = 0.0, n  # counts: at most one per row
        if not lo - slack <= x <= hi + slack:
            raise SpecError(f"the statistics sum {name!r} is {x:.4g}, out of range for {n:.0f} rows: a contribution is "
                            "out of range (a hospital sent values no rows can give)")
    if n < MIN_COUNT_SIGMAS * sigma:
        raise SpecError(f"the statistics count {n:.0f} rows, too few for their noise (std {sigma:.0f} per sum): the "
                        "constants would be noise; raise the statistics' epsilon_share, declare tighter ranges or fix "
                        "center/scale in the schema")


def provisional(schema: dict[str, Any]) -> dict[str, Any]:
    """Stand-in constants from the schema alone (mid-range means, a quarter of the range as std,
    uniform frequencies), marked "provisional": what a node checks its data with before the
    statistics round is done (an invitation, planning ahead). Never used to train or release."""
    names = layout(schema)
    k = _bins(schema)
    vec = np.array([1.0 if x == "n" else 1.0 / 16 if x.endswith(":u2") else 1.0 / k if ":bin" in x
                    else 1e-3 if "=" in x and not x.startswith("label=") else 0.0 for x in names])
    return {**derive(schema, vec), "provisional": True}


def document_sha256(doc: dict[str, Any]) -> str:
    """The SHA-256 of a preprocessing document in canonical JSON: hospitals that derived the same
    constants attest the same hash."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = ["STATISTICS_ROUND", "check_total", "codec_scale", "contribution", "derive", "document_sha256", "enabled",
           "epsilon_of", "epsilon_share", "from_codec", "layout", "local_vector", "noise_for_epsilon",
           "noise_multiplier", "noisy_vector", "provisional", "round_length", "sensitivity", "spend_entry"]

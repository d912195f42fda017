"""Forms of the portal. Validation uses the shared rules (fedproto) so the form says exactly what
the service would refuse; the service (studies.services.study_create) still has the last word."""

from __future__ import annotations

import json
import re

from django import forms

from consortia.models import Consortium, Hospital
from consortia.selectors import limits_summary, study_limit_conflicts
from fedproto import tuning
from fedproto.codec import CODECS, get_codec
from fedproto.datasets import DEFAULT_DATASET, validate_datasets
from fedproto.errors import SpecError
from fedproto.evaluation import AUTO, validate_evaluation
from fedproto.privacy import MAX_CLIP_NORM, MAX_DELTA, MAX_EPSILON
from fedproto.schema import validate_schema
from fedproto.specs import MODEL_TYPES, TASKS, validate_model_spec
from fedproto.study import (
    MAX_BATCH_SIZE,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_ROUND_DEADLINE_S,
    MAX_ROUNDS,
    MIN_ROUND_DEADLINE_S,
)

# Encryption presets offered in the form; each is validated by its codec before it is offered.
ENCRYPTION_PRESETS: list[tuple[str, str, dict]] = [
    ("bfv-standard", "BFV packed — 12-bit quantisation, up to 200 hospitals, fast aggregation (recommended)",
     {"codec": "bfv-packed-raw-v1"}),
    ("bfv-compact", "BFV packed, seeded uploads — half the upload size (3.8 vs 6.7 bytes/parameter), slower aggregation",
     {"codec": "bfv-packed-v1"}),
    ("bfv-precise", "BFV packed — 16-bit quantisation, up to 20 hospitals (finer updates)",
     {"codec": "bfv-packed-raw-v1", "quant_bits": 16, "max_hospitals": 20}),
    ("ckks-flare", "CKKS baseline (approximate arithmetic; for comparison benchmarks)", {"codec": "ckks-flare"}),
]


def encryption_presets() -> list[tuple[str, str, dict]]:
    out = []
    for key, label, enc in ENCRYPTION_PRESETS:
        if enc["codec"] not in CODECS:
            continue
        try:
            out.append((key, label, get_codec(enc["codec"]).validate_config(dict(enc))))
        except SpecError:
            continue
    return out


# Whole-study presets (filled in by a small script; the researcher can change every field); their batch
# scales with the declared sizes through fedproto.tuning.scaled_preset.
STUDY_PRESETS = tuning.STUDY_PRESETS

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def schema_from_text(text: str, *, task: str, label: str) -> dict:
    """A data schema from either a JSON object or a pasted CSV header line (all features float)."""
    text = (text or "").strip()
    if not text:
        raise SpecError("paste a data schema (JSON) or the CSV header line of the data files")
    if text.startswith("{"):
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"the schema is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        return validate_schema(schema)
    header = text.splitlines()[0]
    cols = [c.strip().strip('"') for c in header.split(",") if c.strip()]
    if len(cols) < 2:
        raise SpecError("the CSV header needs at least one feature column and the label column, separated by commas")
    label = (label or "").strip() or cols[-1]
    if label not in cols:
        raise SpecError(f"label column {label!r} is not in the CSV header ({', '.join(cols[:8])}…)")
    bad = [c for c in cols if not NAME_RE.match(c)]
    if bad:
        raise SpecError(f"column name(s) {bad[:5]} are not valid identifiers (letters, digits, underscore)")
    schema = {"task": task,
              "features": [{"name": c, "type": "float"} for c in cols if c != label],
              "label": {"name": label, "type": "binary" if task == "binary_classification" else "float"}}
    return validate_schema(schema)


class StudyForm(forms.Form):
    consortium = forms.ModelChoiceField(queryset=Consortium.objects.none(), empty_label=None)
    name = forms.CharField(max_length=200)
    purpose = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    schema_text = forms.CharField(label="Data schema", widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
                                  help_text="A JSON schema (task, features, label), or the CSV header line of the data files.")
    task = forms.ChoiceField(choices=[(t, t.replace("_", " ")) for t in TASKS], initial="binary_classification",
                             help_text="Used when you paste a CSV header or draft the schema from a sample.")
    label_column = forms.CharField(required=False, max_length=100,
                                   help_text="CSV header or draft: the label column (default: the last column; a draft "
                                             "guesses it by name).")
    model_type = forms.ChoiceField(choices=[(k, f"{k} — {v['description']}") for k, v in MODEL_TYPES.items()],
                                   initial="logistic_regression")
    hidden = forms.CharField(required=False, initial="16", max_length=60,
                             help_text="MLP only: hidden layer widths, e.g. 32,16")
    rounds = forms.IntegerField(min_value=1, max_value=MAX_ROUNDS, initial=3)
    local_epochs = forms.IntegerField(min_value=1, max_value=MAX_LOCAL_EPOCHS, initial=1)
    batch_size = forms.IntegerField(min_value=0, max_value=MAX_BATCH_SIZE, initial=32,
                                    help_text="Rows per DP-SGD step; 0: all of each hospital's rows.")
    settings = forms.ChoiceField(required=False, initial="manual", label="Training settings",
                                 choices=[("manual", "As set here"),
                                          ("auto", "Auto: rounds, epochs, batch, learning rate and clip norm chosen "
                                                   "from the expected data set sizes (no budget spent on tuning)")],
                                 help_text="Auto ignores the rounds, local epochs, batch size, learning rate and clip "
                                           "norm typed here and chooses them from the expected local dataset sizes "
                                           "(Privacy section); the presets above fill the fields in instead.")
    holdout = forms.CharField(required=False, initial=AUTO, max_length=10, label="Local test split",
                              help_text='"auto" (sized per hospital: none under 50 rows, 10 % up to 500, 20 % above) '
                                        "or a fraction of each hospital's rows, 0 to 0.5.")
    local_baseline = forms.ChoiceField(required=False, initial="yes", label="Local-only baseline",
                                       choices=[("yes", "Each hospital compares with its own local-only model "
                                                        "(inside its budget)"), ("no", "No baseline")],
                                       help_text="The baseline is trained on the node with the same settings and "
                                                 "reported with the final round, so each hospital sees what the "
                                                 "collaboration gained it; its privacy cost counts in the hospital's "
                                                 "budget.")
    learning_rate = forms.FloatField(min_value=1e-9, max_value=MAX_LEARNING_RATE, initial=0.5)
    epsilon = forms.FloatField(label="ε (epsilon)", min_value=1e-6, max_value=MAX_EPSILON, initial=3.0,
                               help_text="Total privacy budget per hospital over the whole study.")
    delta = forms.FloatField(label="δ (delta)", min_value=1e-12, max_value=MAX_DELTA, initial=1e-5)
    clip_norm = forms.FloatField(label="Clip norm", min_value=1e-6, max_value=MAX_CLIP_NORM, initial=1.0,
                                 help_text="Per-sample gradient L2 clipping bound.")
    encryption_preset = forms.ChoiceField(choices=[], initial="bfv-standard")
    quorum = forms.IntegerField(min_value=1, initial=2, help_text="Minimum updates for a round to aggregate.")
    round_deadline_s = forms.IntegerField(label="Round deadline (s)", min_value=MIN_ROUND_DEADLINE_S,
                                          max_value=MAX_ROUND_DEADLINE_S, initial=600)
    recruitment_days = forms.IntegerField(label="Recruitment window (days)", min_value=1, max_value=90, initial=7,
                                          required=False,
                                          help_text="Recruitment closes this many days after you start it: the study "
                                                    "then runs with the hospitals that hold its key (if they reach the "
                                                    "quorum), the others withdrawn; otherwise it fails, naming whom it "
                                                    "waited for.")
    hospitals = forms.ModelMultipleChoiceField(queryset=Hospital.objects.none(), widget=forms.CheckboxSelectMultiple,
                                               label="Invited hospitals")
    dataset = forms.CharField(required=False, initial=DEFAULT_DATASET, max_length=64, label="Data set",
                              help_text="The data set every hospital's node uses: a [datasets.NAME] table of its "
                                        "node.toml (a name, never a path).")
    hospital_datasets = forms.CharField(required=False, max_length=4000, label="Data set per hospital",
                                        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
                                        help_text="Optional, one line each: Hospital name = data set name.")
    dataset_sizes = forms.CharField(required=False, initial="200, 1000, 5000", max_length=100,
                                    label="Expected local dataset sizes",
                                    help_text="Only for the privacy preview (sample counts are never shared).")

    def __init__(self, *args, consortia, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["consortium"].queryset = consortia
        self.fields["hospitals"].queryset = (Hospital.objects.filter(consortium__in=consortia, revoked_at__isnull=True)
                                             .select_related("consortium").order_by("consortium__name", "name"))
        many = consortia.count() > 1
        self.fields["hospitals"].label_from_instance = (
            lambda h: (f"{h.name} ({h.consortium.name})" if many else h.name) + f" — {limits_summary(h)}")
        self.presets = encryption_presets()
        self.fields["encryption_preset"].choices = [(k, label) for k, label, _ in self.presets]

    def clean(self):
        d = super().clean()
        errors = {}
        if "schema_text" in d:
            try:
                d["schema"] = schema_from_text(d["schema_text"], task=d.get("task", "binary_classification"),
                                               label=d.get("label_column", ""))
            except SpecError as exc:
                errors["schema_text"] = str(exc)
        if "model_type" in d:
            spec = {"type": d["model_type"]}
            if MODEL_TYPES[d["model_type"]]["mlp"]:
                try:
                    spec["hidden"] = [int(x) for x in re.split(r"[,\s]+", d.get("hidden") or "16") if x]
                except ValueError:
                    errors["hidden"] = "hidden layer widths must be whole numbers separated by commas, e.g. 32,16"
            if "hidden" not in errors:
                try:
                    d["model_spec"] = validate_model_spec(spec, d["schema"]["task"] if "schema" in d else None)
                except SpecError as exc:
                    errors["model_type"] = str(exc)
        self._clean_settings(d, errors)
        self._clean_datasets(d, errors)
        presets = {k: enc for k, _, enc in self.presets}
        if d.get("encryption_preset") in presets:
            d["encryption"] = dict(presets[d["encryption_preset"]])
        hospitals = d.get("hospitals")
        consortium = d.get("consortium")
        if hospitals is not None and consortium is not None:
            foreign = [h.name for h in hospitals if h.consortium_id != consortium.pk]
            if foreign:
                errors["hospitals"] = f"{', '.join(foreign)} not in consortium {consortium.name}"
            if not foreign and "model_spec" in d and all(d.get(k) is not None for k in ("epsilon", "delta", "rounds")):
                conflicts = study_limit_conflicts(hospitals, epsilon=d["epsilon"], delta=d["delta"], rounds=d["rounds"],
                                                  model_type=d["model_spec"]["type"])
                if conflicts:
                    errors["hospitals"] = ("these hospitals would refuse this study (their nodes decline what exceeds "
                                           "their limits): " + " | ".join(conflicts)
                                           + ". Change the study, or leave those hospitals out.")
            if d.get("quorum") and d["quorum"] > len(hospitals):
                errors["quorum"] = f"the quorum ({d['quorum']}) cannot exceed the number of invited hospitals ({len(hospitals)})"
        for k, v in errors.items():
            self.add_error(k, v)
        return d


    def _clean_datasets(self, d: dict, errors: dict) -> None:
        """The study's data sets: one name for all, and "Hospital name = NAME" lines for the exceptions."""
        hospitals = {h.name: h.pk for h in d.get("hospitals") or []}
        per: dict[str, str] = {}
        for n, line in enumerate((d.get("hospital_datasets") or "").splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, dataset = line.rpartition("=")
            if not sep or not name.strip():
                errors["hospital_datasets"] = f"line {n}: write Hospital name = data set name"
                return
            if name.strip() not in hospitals:
                errors["hospital_datasets"] = f"line {n}: {name.strip()[:200]!r} is not one of the invited hospitals"
                return
            per[str(hospitals[name.strip()])] = dataset.strip()
        try:
            d["datasets"] = validate_datasets({"default": (d.get("dataset") or "").strip() or DEFAULT_DATASET,
                                               "hospitals": per})
        except SpecError as exc:
            errors["hospital_datasets" if per and "hospitals" in str(exc) else "dataset"] = str(exc)

    def _clean_settings(self, d: dict, errors: dict) -> None:
        """"auto" training settings from the declared sizes, and the evaluation setting."""
        holdout = (d.get("holdout") or AUTO).strip()
        try:
            d["evaluation"] = validate_evaluation({"holdout": holdout if holdout == AUTO else float(holdout),
                                                   "local_baseline": d.get("local_baseline") != "no"})
        except (SpecError, ValueError) as exc:
            errors["holdout"] = (str(exc) if isinstance(exc, SpecError) else '"auto" or a number between 0 and 0.5')
        if d.get("settings") != "auto" or "model_spec" not in d:
            return
        sizes = [int(t) for t in re.split(r"[,;\s]+", d.get("dataset_sizes") or "") if t.isdigit()]
        try:
            chosen = tuning.auto_settings(sizes, d["model_spec"]["type"])
        except SpecError as exc:
            errors["dataset_sizes"] = str(exc)
            return
        d.update(chosen)
        for k in ("rounds", "local_epochs", "batch_size", "learning_rate", "clip_norm"):
            self.errors.pop(k, None)


def initial_from_study(study, form: StudyForm, *, name: str | None = None) -> dict:
    """The new-study form's values for an existing study's definition (editing a draft, cloning)."""
    enc = {k: e for k, _, e in form.presets}
    preset = next((k for k, e in enc.items() if e == study.encryption), form.fields["encryption_preset"].initial)
    holdout = study.evaluation.get("holdout", AUTO)
    return {"consortium": study.consortium_id, "name": study.name if name is None else name, "purpose": study.purpose,
            "schema_text": json.dumps(study.schema, indent=2), "task": study.schema.get("task"), "label_column": "",
            "model_type": study.model_spec["type"], "hidden": ",".join(map(str, study.model_spec.get("hidden", [16]))),
            "rounds": study.rounds, "local_epochs": study.local_epochs, "batch_size": study.batch_size,
            "learning_rate": study.learning_rate, "epsilon": study.epsilon, "delta": study.delta,
            "clip_norm": study.clip_norm, "encryption_preset": preset, "quorum": study.quorum,
            "round_deadline_s": study.round_deadline_s,
            "recruitment_days": max(1, study.recruitment_window_s // 86400), "settings": "manual", "holdout": str(holdout),
            "local_baseline": "yes" if study.evaluation.get("local_baseline", True) else "no",
            "hospitals": list(study.participations.values_list("hospital_id", flat=True)),
            "dataset": (study.datasets or {}).get("default", DEFAULT_DATASET),
            "hospital_datasets": "\n".join(f"{h.name} = {(study.datasets or {}).get('hospitals', {})[str(h.pk)]}"
                                            for h in Hospital.objects.filter(pk__in=[int(k) for k in (
                                                study.datasets or {}).get("hospitals", {})]).order_by("name"))}


class HospitalForm(forms.Form):
    consortium = forms.ModelChoiceField(queryset=Consortium.objects.none(), empty_label=None)
    name = forms.CharField(max_length=200)
    max_epsilon = forms.FloatField(required=False, min_value=1e-6, max_value=MAX_EPSILON, label="Max ε (hospital's own cap)")
    max_rounds = forms.IntegerField(required=False, min_value=1, max_value=MAX_ROUNDS, label="Max rounds per study")
    allowed_models = forms.MultipleChoiceField(required=False, choices=[(k, k) for k in MODEL_TYPES],
                                               widget=forms.CheckboxSelectMultiple,
                                               help_text="None ticked: any model type from the registry.")

    def __init__(self, *args, consortia, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["consortium"].queryset = consortia

    def clean(self):
        d = super().clean()
        if d.get("consortium") and d.get("name") and Hospital.objects.filter(consortium=d["consortium"], name=d["name"]).exists():
            self.add_error("name", "a hospital with this name already exists in the consortium")
        return d

"""`python manage.py demo`: a full federated study on one machine.

Three hospitals (scikit-learn's breast-cancer data split non-IID), a platform web server, a Celery
worker and three real node daemon processes; five rounds with differential privacy on every node
and homomorphically encrypted aggregation. Runs on the embedded default (SQLite and a broker that
needs no server) unless DATABASE_URL / REDIS_URL are set.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from audit.selectors import verify_all, verify_study_chain
from consortia.models import Hospital
from consortia.services import consortium_create, enrolment_token_create, hospital_create
from fedproto.codec import DEFAULT_CODEC, get_codec
from fedproto.errors import SpecError
from fedproto.privacy import validate_privacy
from fedproto.study import MAX_LOCAL_EPOCHS, MAX_ROUNDS, StudyConfig

from ... import services
from ...demo_data import breast_cancer_split
from ...localstack import REPO, Stack, child_env, write_node_config
from ...models import EncryptedUpdate, FinalModel, PrivacySpend, Round, RoundReport, Study
from ...selectors import study_config

HOSPITALS = ["St Mary General", "Northfield University Hospital", "Riverside Clinic"]


class Command(BaseCommand):
    help = "Run a full demo study: 3 hospitals, 5 rounds, DP + homomorphic encryption, real processes."

    def add_arguments(self, parser):
        parser.add_argument("--summary-json", type=Path, help="write the summary as JSON to this path")
        parser.add_argument("--out", type=Path, default=REPO / "demo-output", help="folder for data, logs and reports")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--epsilon", type=float, default=1.0, help="privacy budget per hospital")
        parser.add_argument("--local-epochs", type=int, default=DEMO_HYPER["local_epochs"],
                            help=f"local DP-SGD epochs per round on each hospital (1-{MAX_LOCAL_EPOCHS}; "
                                 f"default {DEMO_HYPER['local_epochs']})")
        parser.add_argument("--timeout", type=float, default=900, help="seconds before the demo gives up")

    def handle(self, *args, **opts):
        if opts["timeout"] <= 0:
            raise CommandError(f"--timeout must be a positive number of seconds, got {opts['timeout']:g}")
        try:
            validate_privacy(self._privacy(opts))
        except SpecError as exc:
            raise CommandError(f"--epsilon: {exc}") from None
        if not 1 <= opts["rounds"] <= MAX_ROUNDS:
            raise CommandError(f"--rounds must be between 1 and {MAX_ROUNDS}, got {opts['rounds']}")
        if not 1 <= opts["local_epochs"] <= MAX_LOCAL_EPOCHS:
            raise CommandError(f"--local-epochs must be between 1 and {MAX_LOCAL_EPOCHS} (a study's limit), "
                               f"got {opts['local_epochs']}")
        out: Path = opts["out"].resolve()
        if out.exists():
            shutil.rmtree(out / "hospitals", ignore_errors=True)
            shutil.rmtree(out / "logs", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        t_start = time.monotonic()
        self.stdout.write("Preparing the platform database …")
        call_command("migrate", verbosity=0)

        data = breast_cancer_split(out / "hospitals", HOSPITALS)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        consortium = consortium_create(name=f"Demo consortium {stamp}", actor="demo")
        hospitals = [hospital_create(consortium=consortium, name=n, actor="demo") for n in HOSPITALS]
        for h in HOSPITALS:
            self.stdout.write(f"  {h}: {data.hospital_rows[h]} patients in {data.hospital_csvs[h].relative_to(out)}")
        self.stdout.write(f"  held-out evaluation set: {len(data.y_test)} patients")

        stack = Stack(log_dir=out / "logs", env=child_env({"FEDPLATFORM_VAR_DIR": settings.VAR_DIR}))
        try:
            self._run(opts, out, data, consortium, hospitals, stack, t_start)
        finally:
            stack.stop_all()

    @staticmethod
    def _privacy(opts) -> dict:
        return {"epsilon": opts["epsilon"], "delta": 1e-5, "clip_norm": DEMO_HYPER["clip_norm"]}

    def _run(self, opts, out, data, consortium, hospitals, stack, t_start):
        self.stdout.write("Starting the platform web server and a Celery worker …")
        worker = stack.start_worker(wait=False)  # starts while the web server does (each takes seconds)
        infra = [stack.start_web(), worker]
        nodes = []
        for h in hospitals:
            _, token = enrolment_token_create(hospital=h)
            cfg = write_node_config(out / "hospitals" / h.name.replace(" ", "_").lower() / "node.toml",
                                    base_url=stack.base_url, csv=data.hospital_csvs[h.name], max_epsilon=opts["epsilon"],
                                    poll_wait_s=20)
            stack.enrol_node(cfg, token)
            nodes.append(stack.start_node(h.name.split()[0].lower(), cfg))
        stack.wait_ready(worker)
        self.stdout.write(f"Started {len(nodes)} hospital node daemons (logs in {stack.log_dir}); waiting for them "
                          "to come online …")
        self._wait_online(hospitals, nodes, opts["timeout"])
        self.stdout.write(f"  the platform, its worker and {len(nodes)} nodes were up "
                          f"{time.monotonic() - t_start:.1f} s after the demo started")

        study = services.study_create(
            consortium=consortium, name="Breast cancer malignancy (demo)",
            purpose="Predict malignancy of breast masses from digitised FNA features.",
            hospitals=hospitals, schema=data.schema, model_spec={"type": "logistic_regression"},
            rounds=opts["rounds"], local_epochs=opts["local_epochs"], batch_size=DEMO_HYPER["batch_size"],
            learning_rate=DEMO_HYPER["learning_rate"],
            privacy=self._privacy(opts),
            encryption={"codec": DEFAULT_CODEC}, quorum=2, round_deadline_s=120, seed=20261122, actor="demo")
        services.study_open_recruitment(study=study, actor="demo")
        self.stdout.write(f"Study #{study.pk} '{study.name}' is recruiting; the nodes approve under their own limits.")
        t_study = time.monotonic()
        self._follow(study, nodes, infra, opts["timeout"])
        wall_study = time.monotonic() - t_study
        summary = self._summary(study, data, hospitals, wall_study, time.monotonic() - t_start)
        self._print_summary(summary)
        if opts["summary_json"]:
            path = opts["summary_json"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2))
            self.stdout.write(f"Summary written to {path}")
        self._write_report(study, out)

    def _follow(self, study: Study, nodes, infra, timeout: float) -> None:
        from tqdm import tqdm

        deadline = time.monotonic() + timeout
        bar = tqdm(total=study.rounds, desc="rounds", unit="round", file=sys.stdout, dynamic_ncols=True)
        shown: set[int] = set()
        last_status = None
        try:
            while time.monotonic() < deadline:
                study.refresh_from_db()
                if study.status != last_status:
                    tqdm.write(f"  study status: {study.status}")
                    last_status = study.status
                for rnd in Round.objects.filter(study=study, status=Round.Status.DONE).order_by("number"):
                    if rnd.number not in shown:
                        shown.add(rnd.number)
                        agg = rnd.aggregate
                        tqdm.write(f"  round {rnd.number}/{study.rounds}: {agg.n_contributors} encrypted updates "
                                   f"aggregated in {agg.seconds * 1000:.0f} ms")
                        bar.update(1)
                if study.status in (Study.Status.FAILED, Study.Status.CANCELLED):
                    raise CommandError(f"the study {study.status}: {study.status_reason}\n" + self._logs(nodes))
                if study.status == Study.Status.COMPLETED and FinalModel.objects.filter(study=study).exists():
                    last = Round.objects.filter(study=study, number=study.rounds, status=Round.Status.DONE).first()
                    if RoundReport.objects.filter(round=last).count() >= study.participations.filter(state="approved").count():
                        return
                dead = [n for n in nodes if not n.alive()]
                if len(dead) == len(nodes):
                    raise CommandError("every node daemon exited:\n" + self._logs(nodes))
                down = [p for p in infra if not p.alive()]
                if down:
                    raise CommandError(f"the platform's {down[0].name} process exited:\n{down[0].tail(30)}")
                time.sleep(0.2)
        finally:
            bar.close()
        raise CommandError(f"the demo did not finish within {timeout:.0f}s (study is {study.status})\n" + self._logs(nodes))

    def _wait_online(self, hospitals, nodes, timeout: float) -> None:
        """Until every node has sent its first heartbeat (it does after loading torch, Opacus and
        TenSEAL and warming them up), so the study's timing counts the study, not process start-up."""
        deadline = time.monotonic() + timeout
        ids = [h.pk for h in hospitals]
        while Hospital.objects.filter(pk__in=ids, last_heartbeat__isnull=False).count() < len(ids):
            dead = [n for n in nodes if not n.alive()]
            if dead:
                raise CommandError(f"node daemon {dead[0].name} exited during start-up:\n{dead[0].tail(30)}")
            if time.monotonic() > deadline:
                raise CommandError(f"the node daemons did not come online within {timeout:.0f}s\n" + self._logs(nodes))
            time.sleep(0.1)

    @staticmethod
    def _logs(nodes) -> str:
        return "\n".join(f"--- {n.name} (last lines) ---\n{n.tail(15)}" for n in nodes)

    def _summary(self, study: Study, data, hospitals, wall_study: float, wall_total: float) -> dict:
        from hospital_node.data import load_study_data
        from hospital_node.networks import load_model_bytes
        from hospital_node.trainer import evaluate, train_local_only

        from audit.privacy import recompute_study

        cfg = StudyConfig.from_wire(study_config(study))
        recomputed = {h.hospital_id: h for h in recompute_study(study).hospitals}
        center = np.array([f["center"] for f in data.schema["features"]])
        scale = np.array([f["scale"] for f in data.schema["features"]])
        X_test = ((data.X_test - center) / scale).astype(np.float32)
        fm = study.final_model
        model = load_model_bytes(cfg, (Path(settings.MEDIA_ROOT) / fm.path).read_bytes())
        test = evaluate(model, X_test, data.y_test, "binary_classification")
        self.stdout.write("Training local-only baselines under the same privacy budget …")
        rows = []
        for h in hospitals:
            spend = PrivacySpend.objects.filter(job__hospital=h, job__round__study=study).order_by("-epsilon").first()
            ds = load_study_data(cfg, data.hospital_csvs[h.name])
            local = train_local_only(cfg, ds.X_train, ds.y_train, seed=h.pk)
            rows.append({
                "name": h.name, "epsilon_spent": spend.epsilon if spend else 0.0, "epsilon_budget": study.epsilon,
                "delta": study.delta, "n_train": int(len(ds.y_train)),
                "noise_multiplier": spend.noise_multiplier if spend else None,
                "sample_rate": spend.sample_rate if spend else None,
                "steps": sum(PrivacySpend.objects.filter(job__hospital=h, job__round__study=study)
                             .values_list("steps", flat=True)),
                "accountant": spend.accountant if spend else None,
                "dp_engine": spend.dp_engine if spend else None,
                # Opacus's accountant re-run here from the inputs the node reported (not trusted from the node).
                "epsilon_recomputed": recomputed[h.pk].recomputed if h.pk in recomputed else None,
                "epsilon_matches_accountant": bool(h.pk in recomputed and recomputed[h.pk].ok),
                "local_only_test_auc": evaluate(local, X_test, data.y_test, "binary_classification")["auc"],
            })
        sizes = list(EncryptedUpdate.objects.filter(job__round__study=study).values_list("size_bytes", flat=True))
        codec = get_codec(study.encryption["codec"])
        params = codec.describe(study.encryption)
        n_parts = codec.n_parts(study.encryption, study.n_params)
        # A ciphertext holds many more values than this 31-parameter model: report the wire cost per
        # parameter slot of a full upload (what a real model pays) and the cost for this model.
        capacity = params["values_per_slot"] * (params["slots_per_ciphertext"] * n_parts - params["header_slots"]) \
            if {"values_per_slot", "slots_per_ciphertext", "header_slots"} <= params.keys() else None
        chain = verify_study_chain(study.pk)
        rounds_done = Round.objects.filter(study=study, status=Round.Status.DONE).count()
        return {
            "study_id": study.pk, "rounds_completed": rounds_done, "rounds_planned": study.rounds,
            "test_auc": test["auc"], "test_accuracy": test["accuracy"], "n_test": int(len(data.y_test)),
            "hospitals": rows,
            "encryption": {"scheme": params.get("scheme", study.encryption["codec"]),
                           "codec": study.encryption["codec"],
                           "bytes_per_parameter": (float(np.mean(sizes)) / capacity) if sizes and capacity else None,
                           "bytes_per_parameter_this_model": (float(np.mean(sizes)) / study.n_params) if sizes else None,
                           "upload_capacity_parameters": capacity, "n_params": study.n_params,
                           "mean_upload_bytes": float(np.mean(sizes)) if sizes else None, "parameters": params},
            "final_model_sha256": fm.sha256,
            "audit_chain_valid": chain.ok and all(r.ok for r in verify_all()),
            "audit_head_hash": chain.head_hash,
            "wall_seconds_study": round(wall_study, 2), "wall_seconds_total": round(wall_total, 2),
        }

    def _print_summary(self, s: dict) -> None:
        w = self.stdout.write
        w("")
        w("=" * 72)
        w(f"Demo study #{s['study_id']}: {s['rounds_completed']}/{s['rounds_planned']} rounds completed "
          f"in {s['wall_seconds_study']:.1f} s")
        w(f"Federated model on the held-out set: ROC AUC {s['test_auc']:.4f}, accuracy {s['test_accuracy']:.4f} "
          f"(n={s['n_test']})")
        w(f"{'hospital':34} {'n_train':>7} {'epsilon':>8} {'Opacus':>8} {'budget':>7} {'local-only AUC':>15}")
        for h in s["hospitals"]:
            w(f"{h['name']:34} {h['n_train']:7d} {h['epsilon_spent']:8.4f} {h['epsilon_recomputed'] or 0:8.4f} "
              f"{h['epsilon_budget']:7.2f} {h['local_only_test_auc']:15.4f}")
        w("  (epsilon: reported by the node; Opacus: recomputed here from the noise, sampling rate and steps it used)")
        engines = sorted({h["dp_engine"] or "not reported" for h in s["hospitals"]})
        w(f"DP-SGD engine on the nodes: {', '.join(engines)}"
          + (" (Opacus' DPOptimizer step in matrix form, checked against Opacus 'ew' at node start-up)"
             if engines == ["fused"] else ""))
        e = s["encryption"]
        w(f"Encryption: {e['scheme']} ({e['codec']}): {e['bytes_per_parameter']:.2f} bytes per parameter on the wire "
          f"for a full upload ({e['upload_capacity_parameters']} parameters per upload); this "
          f"{e['n_params']}-parameter model pays {e['mean_upload_bytes'] / 1024:.1f} KiB per upload")
        w(f"Audit chain valid: {s['audit_chain_valid']} (head {s['audit_head_hash'][:16]}…)")
        w("=" * 72)

    def _write_report(self, study: Study, out: Path) -> None:
        from audit.report import PdfUnavailable, write_study_report

        reports = out / "reports"
        try:
            paths = write_study_report(study=study, out_dir=reports)
        except PdfUnavailable as exc:
            self.stdout.write(f"Audit report written to {reports / 'report.html'}")
            self.stdout.write(f"No PDF report: {exc}")
            return
        for p in paths:
            self.stdout.write(f"Audit report written to {p}")


# Study hyper-parameters tuned for DP at epsilon 1 on ~150 training rows per hospital.
DEMO_HYPER = {"local_epochs": 5, "batch_size": 16, "learning_rate": 0.1, "clip_norm": 1.0}

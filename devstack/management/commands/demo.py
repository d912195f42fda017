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

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from consortia.models import Hospital
from consortia.services import consortium_create, enrolment_token_create, hospital_create
from fedproto.errors import SpecError
from fedproto.privacy import validate_privacy
from fedproto.study import MAX_LOCAL_EPOCHS, MAX_ROUNDS
from studies import services
from studies.models import FinalModel, Round, RoundReport, Study

from ...demo import DEMO_HYPER, HOSPITALS, demo_privacy, demo_study_fields
from ...demo_data import breast_cancer_split
from ...demo_summary import build_summary, summary_lines
from ...localstack import REPO, Stack, child_env, write_node_config


class Command(BaseCommand):
    help = "Run a full demo study: 3 hospitals, 5 rounds, DP + homomorphic encryption, real processes."

    def add_arguments(self, parser):
        parser.add_argument("--summary-json", type=Path, help="write the summary as JSON to this path")
        parser.add_argument("--out", type=Path, default=REPO / "demo-output", help="folder for data, logs and reports")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--preprocessing", choices=("federated", "reference"), default="reference",
                            help="federated: declared ranges, global constants from the statistics round (round 0); "
                                 "reference: the schema fixes center/scale from the evaluation set")
        parser.add_argument("--epsilon", type=float, default=1.0, help="privacy budget per hospital")
        parser.add_argument("--local-epochs", type=int, default=DEMO_HYPER["local_epochs"],
                            help=f"local DP-SGD epochs per round on each hospital (1-{MAX_LOCAL_EPOCHS}; "
                                 f"default {DEMO_HYPER['local_epochs']})")
        parser.add_argument("--timeout", type=float, default=900, help="seconds before the demo gives up")

    def handle(self, *args, **opts):
        if opts["timeout"] <= 0:
            raise CommandError(f"--timeout must be a positive number of seconds, got {opts['timeout']:g}")
        try:
            validate_privacy(demo_privacy(opts["epsilon"]))
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

        data = breast_cancer_split(out / "hospitals", HOSPITALS, preprocessing=opts["preprocessing"])
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
            consortium=consortium, hospitals=hospitals, actor="demo",
            **demo_study_fields(schema=data.schema, rounds=opts["rounds"], local_epochs=opts["local_epochs"],
                                epsilon=opts["epsilon"]))
        services.study_open_recruitment(study=study, actor="demo")
        self.stdout.write(f"Study #{study.pk} '{study.name}' is recruiting; the nodes approve under their own limits.")
        t_study = time.monotonic()
        self._follow(study, nodes, infra, opts["timeout"])
        wall_study = time.monotonic() - t_study
        summary = build_summary(study, data, hospitals, wall_study, time.monotonic() - t_start, self.stdout.write)
        for line in summary_lines(summary):
            self.stdout.write(line)
        if opts["summary_json"]:
            path = opts["summary_json"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2))
            self.stdout.write(f"Summary written to {path}")
        self._write_report(study, out)

    def _follow(self, study: Study, nodes, infra, timeout: float) -> None:
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

    def _write_report(self, study: Study, out: Path) -> None:
        # The report module loads Opacus (epsilon recomputation), which takes seconds to import.
        from reports.report import PdfUnavailable, write_study_report

        reports = out / "reports"
        try:
            paths = write_study_report(study=study, out_dir=reports)
        except PdfUnavailable as exc:
            self.stdout.write(f"Audit report written to {reports / 'report.html'}")
            self.stdout.write(f"No PDF report: {exc}")
            return
        for p in paths:
            self.stdout.write(f"Audit report written to {p}")


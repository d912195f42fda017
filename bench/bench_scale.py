"""Benchmark 4: one round with 10, 50 and 200 hospitals against the platform on PostgreSQL + Redis.

Usage:
    python bench/bench_scale.py [--hospitals 10,50,200] [--hidden 128,64] [--clients-per-process 50]
                                [--database-url URL] [--redis-url URL]

The platform runs as in production, on one machine: gunicorn (one process, enough threads for a
long-poll per hospital), 2 Celery workers (one with beat) on Redis, PostgreSQL. Hospitals are light
node clients, many per process (threads), that speak the real HTTP protocol through the node's own
client (hospital_node.client.PlatformClient): enrol with a one-time token and an X25519 key,
long-poll for work, approve the invitation, the custodian generates the study secret, publishes
the parameters and seals the key to every other hospital's public key (sealed boxes, relayed in
batches), the others open it, check it against the published context and acknowledge it; each
hospital encrypts a real update with the real codec (bfv-packed-v1) and uploads it; after the
platform aggregated, the hospitals fetch the aggregate, decrypt it (once per client process,
shared by its threads), attest the global model's SHA-256 in their round report, and the
custodian releases the final model. Light clients skip DP training (a random update instead).

Per hospital count: a study of one round (model mlp_classifier --hidden, quorum = all) and the
timeline from the database: round opened -> every hospital holds its job -> all updates in ->
aggregated -> every hospital reported. "Round" = round opened -> every hospital reported.
Baseline, same run: the same client and aggregation work in one process with no platform
(H encryptions, one aggregation, one decryption), and the ratio against it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchargs import ensure_database, int_in, int_list

from fedproto.codec.bfv_packed import MAX_HOSPITALS_LIMIT

REPO = Path(__file__).resolve().parents[1]

TARGET_200_S = 30.0
SEAL_BATCH = 32
ZERO_SPEND = {"epsilon": 0.0, "delta": 1e-5, "noise_multiplier": 0.0, "sample_rate": 1.0, "steps": 0, "clip_norm": 1.0,
              "accountant": "rdp", "accountant_version": "bench", "epsilon_round": 0.0, "dp_engine": "none"}


# ----------------------------------------------------------------------------- light node client


class LightNode:
    def __init__(self, url: str, token: str, stats: dict, shared: dict, lock: threading.Lock):
        from hospital_node.client import PlatformClient
        from hospital_node.credentials import new_keypair

        self.key = new_keypair()
        self.url, self.enrol_token = url, token
        self.client = PlatformClient(url, None, 60.0)
        self.stats, self.shared, self.lock = stats, shared, lock
        self.secret: bytes | None = None
        self.done = False
        self.errors = 0

    def retry(self, fn, *a, **kw):
        from hospital_node.errors import TransientError

        for attempt in range(30):
            try:
                return fn(*a, **kw)
            except TransientError:
                self.errors += 1
                time.sleep(min(2.0, 0.05 * 2 ** attempt))
        return fn(*a, **kw)

    def run(self, deadline: float) -> None:
        from hospital_node.client import PlatformClient

        pub = base64.b64encode(bytes(self.key.public_key)).decode()
        r = self.retry(self.client.enrol, self.enrol_token, pub)
        self.hospital_id = r["hospital_id"]
        self.client = PlatformClient(self.url, r["node_token"], 60.0)
        skip: set[str] = set()
        while not self.done and time.monotonic() < deadline:
            items = self.retry(self.client.work, 20, skip)
            for item in items:
                getattr(self, "on_" + item["kind"])(item)
                if item["kind"] in ("evaluate",):
                    skip.add(item["key"])

    def codec(self):
        from fedproto.codec import get_codec

        return get_codec("bfv-packed-v1")

    def on_invitation(self, item):
        self.study = item["study"]
        self.retry(self.client.decision, self.study["id"], "approve", "benchmark light client")

    def on_publish_context(self, item):
        c = self.codec()
        self.secret = c.generate_secret(item["study"]["encryption"])
        self.retry(self.client.post_context, item["study"]["id"], c.name, c.public_params(self.secret))

    def on_seal_keys(self, item):
        from hospital_node.credentials import seal_for

        keys = [{"hospital_id": r["hospital_id"], "sealed": seal_for(r["public_key"], self.secret)}
                for r in item["recipients"]]
        for i in range(0, len(keys), SEAL_BATCH):
            self.retry(self.client.post_sealed_keys, item["study_id"], keys[i:i + SEAL_BATCH])

    def on_fetch_key(self, item):
        from fedproto.codec import public_params_sha256
        from hospital_node.credentials import open_sealed

        sid = item["study_id"]
        sealed = self.retry(self.client.get_sealed_key, sid)
        self.secret = open_sealed(bytes(self.key), sealed["sealed"])
        ctx = self.retry(self.client.get_context, sid)
        mine = public_params_sha256(self.codec().public_params(self.secret))
        if mine != ctx["sha256"]:
            raise RuntimeError("sealed key does not match the published context")
        self.retry(self.client.key_ack, sid, mine)

    def on_train(self, item):
        import numpy as np

        from fedproto.wire import pack_parts

        study = item["study"]
        rng = np.random.default_rng()
        update = rng.normal(0.0, 0.01, study["n_params"])
        parts = self.codec().encrypt_update(self.secret, study["encryption"], update, int(rng.integers(50, 500)), rng)
        # A light client trains no model and spends nothing, but the platform aggregates no update
        # without its recorded spend: report a zero one with the upload.
        self.retry(self.client.upload_update, item["job_id"], pack_parts(parts), spend=ZERO_SPEND)

    def _global(self, study: dict, round_no: int) -> tuple[str, bytes]:
        """Decrypt the aggregate once per client process (threads share it); the model's sha256."""
        import numpy as np

        from fedproto.study import StudyConfig
        from fedproto.wire import unpack_parts
        from hospital_node.networks import flatten, initial_model, model_bytes, model_from_flat

        key = (study["id"], round_no)
        with self.lock:
            if key not in self.shared:
                frame, _ = self.retry(self.client.get_aggregate, study["id"], round_no)
                res = self.codec().decrypt_aggregate(self.secret, study["encryption"], unpack_parts(frame),
                                                     study["n_params"])
                config = StudyConfig.from_wire(study)
                model = model_from_flat(config, flatten(initial_model(config)) + np.asarray(res.mean_update))
                data = model_bytes(model)
                import hashlib

                self.shared[key] = (hashlib.sha256(data).hexdigest(), data)
            return self.shared[key]

    def on_evaluate(self, item):
        sha, _ = self._global(self.study, item["round"])
        self.retry(self.client.report, item["study_id"], item["round"],
                   {"metrics": {"auc": 0.5}, "n_test": 1, "model_sha256": sha, "epsilon_spent": 0.0})
        if self.study["rounds"] == item["round"] and self.study["custodian_hospital_id"] != self.hospital_id:
            self.done = True

    def on_upload_final_model(self, item):
        _, data = self._global(self.study, item["round"])
        self.retry(self.client.upload_final_model, item["study_id"], data)
        self.done = True


def client_main(url: str, tokens: list[str], timeout: float) -> int:
    # Import everything first (torch, TenSEAL, PyNaCl): a real node daemon is a long-running process.
    import fedproto.codec  # noqa: F401
    import fedproto.wire  # noqa: F401
    import hospital_node.client  # noqa: F401
    import hospital_node.credentials  # noqa: F401
    import hospital_node.networks  # noqa: F401
    from fedproto.codec import get_codec

    get_codec("bfv-packed-v1")
    stats: dict = {}
    shared: dict = {}
    lock = threading.Lock()
    nodes = [LightNode(url, t, stats, shared, lock) for t in tokens]
    deadline = time.monotonic() + timeout
    failures = []

    def run(n):
        try:
            n.run(deadline)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    print(json.dumps({"done": sum(n.done for n in nodes), "retries": sum(n.errors for n in nodes),
                      "failures": failures[:5]}))
    return 0 if not failures else 1


# ----------------------------------------------------------------------------- orchestration


def run_scale(H: int, hidden: list[int], per_proc: int, stack_env: dict, base_url: str, log_dir: Path) -> dict:
    from consortia.services import consortium_create, enrolment_token_create, hospital_create
    from devstack.demo_data import breast_cancer_split
    from studies import services
    from studies.models import EncryptedUpdate, Round, RoundReport, Study, TrainingJob

    data = breast_cancer_split(Path(tempfile.mkdtemp(prefix="bench-scale-data-")), ["A", "B"])
    consortium = consortium_create(name=f"Scale {H} {time.time_ns()}", actor="bench")
    hospitals = [hospital_create(consortium=consortium, name=f"Hospital {i:03d}", actor="bench") for i in range(H)]
    tokens = [enrolment_token_create(hospital=h)[1] for h in hospitals]
    procs = []
    t_clients = time.monotonic()
    for i in range(0, H, per_proc):
        f = log_dir / f"tokens-{H}-{i}.json"
        f.write_text(json.dumps(tokens[i:i + per_proc]))
        procs.append(subprocess.Popen([sys.executable, __file__, "--client", base_url, str(f)], cwd=str(REPO),
                                      env=stack_env, stdout=subprocess.PIPE, stderr=open(log_dir / f"clients-{H}-{i}.log", "w"),
                                      text=True))
    from consortia.models import Hospital

    while Hospital.objects.filter(pk__in=[h.pk for h in hospitals], public_key="").exists():
        if time.monotonic() - t_clients > 300:
            raise RuntimeError("light clients did not enrol within 300 s")
        time.sleep(0.2)
    t_enrolled = time.monotonic()
    study = services.study_create(
        consortium=consortium, name=f"scale {H}", hospitals=hospitals, schema=data.schema,
        model_spec={"type": "mlp_classifier", "hidden": hidden}, rounds=1, local_epochs=1, batch_size=32,
        learning_rate=0.1, privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
        encryption={"codec": "bfv-packed-v1", "max_hospitals": max(200, H)}, quorum=H, round_deadline_s=600,
        seed=1, actor="bench")
    services.study_open_recruitment(study=study, actor="bench")
    t_open = time.time()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        outs.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failures": ["no output"]})
    study.refresh_from_db()
    if study.status != Study.Status.COMPLETED:
        raise RuntimeError(f"study with {H} hospitals ended {study.status}: {study.status_reason} {outs}")
    rnd = Round.objects.get(study=study, number=1, status=Round.Status.DONE)
    claims = list(TrainingJob.objects.filter(round=rnd).values_list("claimed_at", flat=True))
    ups = list(EncryptedUpdate.objects.filter(job__round=rnd).values_list("received_at", flat=True))
    reps = list(RoundReport.objects.filter(round=rnd).values_list("reported_at", flat=True))
    opened = rnd.collecting_at.timestamp()
    return {
        "H": H, "n_params": study.n_params, "setup_s": opened - t_open,
        "enrol_s": t_enrolled - t_clients,
        "claimed_s": max(claims).timestamp() - opened, "uploaded_s": max(ups).timestamp() - opened,
        "closed_s": rnd.closed_at.timestamp() - opened, "aggregated_s": rnd.done_at.timestamp() - opened,
        "agg_task_s": rnd.aggregate.seconds, "reported_s": max(reps).timestamp() - opened,
        "n_reports": len(reps), "retries": sum(o.get("retries", 0) for o in outs),
        "failures": [f for o in outs for f in o.get("failures", [])],
    }


def baseline(H: int, n_params: int) -> float:
    """The same crypto work with no platform: H encryptions, one aggregation, one decryption."""
    import numpy as np

    from fedproto.codec import get_codec

    c = get_codec("bfv-packed-v1")
    enc = c.validate_config({"codec": "bfv-packed-v1", "max_hospitals": max(200, H)})
    secret = c.generate_secret(enc)
    ctx = c.load_params(c.public_params(secret))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    acc = None
    for i in range(H):
        parts = c.encrypt_update(secret, enc, rng.normal(0, 0.01, n_params), 100, rng)
        acc = c.accumulate(ctx, acc, parts, i)
    c.decrypt_aggregate(secret, enc, c.finish(ctx, acc), n_params)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hospitals", type=int_list(2, MAX_HOSPITALS_LIMIT, "10,50"), default="10,50,200",
                    help="hospital counts, one round each")
    ap.add_argument("--hidden", type=int_list(1, 1 << 20, "128,64"), default="128,64",
                    help="mlp_classifier hidden widths")
    ap.add_argument("--clients-per-process", type=int_in(1, 1000), default=50)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                             "postgres://postgres@127.0.0.1:5432/bench"))
    ap.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"))
    ap.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args.client[0], json.loads(Path(args.client[1]).read_text()), 900)

    counts, hidden = args.hospitals, args.hidden
    from fedproto.errors import SpecError
    from fedproto.specs import validate_model_spec

    try:
        validate_model_spec({"type": "mlp_classifier", "hidden": hidden}, "binary_classification")
    except SpecError as exc:
        ap.error(f"--hidden: {exc}")
    ensure_database(args.database_url)
    var = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ.update({"DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
                       "FEDPLATFORM_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "config.settings",
                       "FEDPLATFORM_LOG_LEVEL": "WARNING"})
    import django

    django.setup()
    from django.core.management import call_command

    from devstack.localstack import Stack, child_env

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    env = child_env({"FEDPLATFORM_ENROL_RATE": "100000/min", "FEDPLATFORM_LOG_LEVEL": "WARNING"})
    stack = Stack(log_dir=var / "logs", env=env)
    print(f"Scale: one round, hospitals {counts}, model mlp_classifier hidden {hidden}, bfv-packed-v1; "
          f"PostgreSQL + Redis, gunicorn 1 process x {max(counts) + 32} threads, 2 Celery workers; "
          f"light clients {args.clients_per_process} per process (logs {var / 'logs'})")
    rows = []
    try:
        stack.start_web(threads=max(counts) + 32)
        stack.start_worker(name="worker1", beat=True)
        stack.start_worker(name="worker2", beat=False)
        for H in counts:
            r = run_scale(H, hidden, args.clients_per_process, env, stack.base_url, stack.log_dir)
            r["baseline_s"] = baseline(H, r["n_params"])
            rows.append(r)
            print(f"  {H} hospitals: round {r['reported_s']:.2f} s", flush=True)
    finally:
        stack.stop_all()
    print()
    print(f"{'hospitals':>9} {'params':>7} {'setup':>7} {'all hold job':>12} {'all uploaded':>12} "
          f"{'aggregated':>10} {'agg task':>8} {'all reported':>12} {'per hosp.':>9} {'baseline':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['H']:>9} {r['n_params']:>7} {r['setup_s']:6.2f}s {r['claimed_s']:11.2f}s {r['uploaded_s']:11.2f}s "
              f"{r['aggregated_s']:9.2f}s {r['agg_task_s']:7.2f}s {r['reported_s']:11.2f}s "
              f"{r['reported_s'] / r['H'] * 1000:7.0f}ms {r['baseline_s']:7.2f}s {r['reported_s'] / r['baseline_s']:6.2f}")
        if r["failures"] or r["retries"]:
            print(f"          retries {r['retries']}, client failures: {r['failures']}")
    print("setup = recruitment opened -> round 1 opened (approvals, context, sealed-key relay, key acks); "
          "times after it are from round 1 opened; baseline = the same encryptions + aggregation + "
          "decryption in one process")
    base = rows[0]
    for r in rows[1:]:
        print(f"growth {base['H']} -> {r['H']} hospitals (x{r['H'] / base['H']:.0f}): round time x"
              f"{r['reported_s'] / base['reported_s']:.2f}")
    big = [r for r in rows if r["H"] >= 200]
    if big:
        r = big[0]
        print(f"200 hospitals in one round: {r['reported_s']:.2f} s (target <= {TARGET_200_S:.0f} s: "
              f"{'met' if r['reported_s'] <= TARGET_200_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Platform-side set-up of a fault scenario, run as a subprocess against the private database
(the test process' own Django connection points at pytest-django's database, not at the
cluster the suite restarts).

    python tests/faults/platform_ops.py setup --out DIR --url URL --data DATA.json [--rounds 3 ...]

creates a consortium and the hospitals named in the --data file, enrols one node
per hospital (a fresh keypair; its credentials written to DIR/node<i>/credentials.json, as
`hospital_node enrol` writes them, through the same enrolment service the HTTP endpoint calls:
the nodes can then start warming up before the web server answers), creates a study in
recruitment, and prints one JSON object: the study id and each hospital's id, name and CSV.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path


def setup(args: argparse.Namespace) -> dict:
    import django

    django.setup()
    from consortia.services import consortium_create, enrolment_token_create, hospital_create, node_enrol
    from hospital_node.credentials import Credentials, new_keypair, save_credentials
    from studies import services

    data = json.loads(Path(args.data).read_text())
    names = list(data["csvs"])
    consortium = consortium_create(name=f"Fault consortium {time.time_ns()}")
    hospitals, out = [], []
    for i, name in enumerate(names):
        h = hospital_create(consortium=consortium, name=name)
        _, token = enrolment_token_create(hospital=h)
        key = new_keypair()
        h, node_token = node_enrol(enrolment_token=token, public_key=base64.b64encode(bytes(key.public_key)).decode(),
                                   node_version="fault-suite")
        save_credentials(Path(args.out) / f"node{i}" / "credentials.json",
                         Credentials(hospital_id=h.pk, hospital_name=name, node_token=node_token,
                                     private_key=bytes(key), platform_url=args.url))
        hospitals.append(h)
        out.append({"id": h.pk, "name": name, "csv": data["csvs"][name], "node_dir": f"node{i}"})
    study = services.study_create(
        consortium=consortium, name=f"fault study {time.time_ns()}", hospitals=hospitals, schema=data["schema"],
        model_spec={"type": "logistic_regression"}, rounds=args.rounds, local_epochs=args.local_epochs,
        batch_size=args.batch_size, learning_rate=0.5,
        privacy={"epsilon": args.epsilon, "delta": 1e-5, "clip_norm": 1.0}, encryption={},
        quorum=args.quorum, round_deadline_s=args.deadline, seed=99)
    services.study_open_recruitment(study=study, actor="test")
    return {"study_id": study.pk, "consortium_id": consortium.pk, "hospitals": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--out", required=True)
    s.add_argument("--url", required=True, help="the platform URL the nodes will use")
    s.add_argument("--data", required=True, help='JSON: {"schema": {...}, "csvs": {hospital name: CSV path}}')
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--quorum", type=int, default=2)
    s.add_argument("--deadline", type=int, default=60)
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--epsilon", type=float, default=1.0)
    args = p.parse_args(argv)
    print(json.dumps(setup(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m hospital_node {enrol,run,status,check} --config node.toml``, ``predict --model M --csv F``.

Exit codes: 0 ok / clean shutdown, 1 error, 2 bad configuration or usage,
3 the platform refused the node's credentials (401/403: re-enrol or ask the admin).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fedproto.errors import SpecError

from . import NODE_VERSION
from .config import GRAD_SAMPLE_MODES, plain_http_warning
from .errors import ApiError, ConfigError, FatalAuthError, NodeError, TransientError
from .instance import InstanceLock

log = logging.getLogger("hospital_node")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_AUTH = 0, 1, 2, 3


def _setup_logging(verbose: bool) -> None:
    verbose = verbose or os.environ.get("HOSPITAL_NODE_LOG_LEVEL", "").upper() == "DEBUG"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "opacus", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _warn_plain_http(url: str) -> None:
    warning = plain_http_warning(url)
    if warning:
        logging.getLogger("hospital_node").warning("%s", warning)


def cmd_enrol(args) -> int:
    from .client import PlatformClient
    from .config import load_config
    from .credentials import Credentials, new_keypair, save_credentials

    cfg = load_config(args.config)
    _warn_plain_http(cfg.platform_url)
    if cfg.credentials_file.exists() and not args.force:
        print(f"error: this node is already enrolled (credentials at {cfg.credentials_file}); "
              f"use --force to replace them with a new enrolment token", file=sys.stderr)
        return EXIT_CONFIG
    token = args.token.strip()
    if not token:
        print("error: --token is empty: paste the one-time enrolment token from the portal", file=sys.stderr)
        return EXIT_CONFIG
    key = new_keypair()
    client = PlatformClient(cfg.platform_url, None, cfg.request_timeout_s)
    import base64

    try:
        resp = client.enrol(token, base64.b64encode(bytes(key.public_key)).decode())
    except (ApiError, FatalAuthError) as e:
        print(f"error: enrolment refused by the platform: {e}. Ask the consortium admin for a new "
              f"enrolment token", file=sys.stderr)
        return EXIT_AUTH
    try:
        creds = Credentials(hospital_id=int(resp["hospital_id"]), hospital_name=str(resp.get("hospital_name", "")),
                            node_token=str(resp["node_token"]), private_key=bytes(key),
                            platform_url=cfg.platform_url)
    except (KeyError, TypeError, ValueError):
        print("error: the platform's enrolment answer lacks hospital_id/node_token", file=sys.stderr)
        return EXIT_ERROR
    save_credentials(cfg.credentials_file, creds)
    print(f"enrolled as hospital {creds.hospital_id} ({creds.hospital_name}); credentials written to "
          f"{cfg.credentials_file} (mode 0600)")
    return EXIT_OK


def cmd_run(args) -> int:
    from .config import load_config
    from .credentials import load_credentials

    cfg = load_config(args.config)
    _warn_plain_http(cfg.platform_url)
    if args.grad_sample_mode:
        import dataclasses

        cfg = dataclasses.replace(cfg, grad_sample_mode=args.grad_sample_mode)
    creds = load_credentials(cfg.credentials_file)
    lock = InstanceLock(cfg.ledger).acquire()  # held until the process exits (AlreadyRunning: exit 1)
    from .daemon import Node  # imports torch/Opacus: only once the config is known to be good
    node = Node(cfg, creds)
    node.install_signal_handlers()
    node.warm_up()
    try:
        return node.run(once=args.once)
    finally:
        lock.release()


def cmd_status(args) -> int:
    from .client import PlatformClient
    from .config import load_config
    from .credentials import load_credentials
    from .ledger import Ledger

    cfg = load_config(args.config)
    print(f"node version {NODE_VERSION}, config {cfg.path}")
    rc = EXIT_OK
    try:
        creds = load_credentials(cfg.credentials_file)
        print(f"enrolled: yes, hospital {creds.hospital_id} ({creds.hospital_name})")
    except ConfigError as e:
        creds = None
        print(f"enrolled: no ({e})")
        rc = EXIT_ERROR
    if creds is not None:
        try:
            resp = PlatformClient(cfg.platform_url, creds.node_token, cfg.request_timeout_s).heartbeat({"status": "cli"})
            print(f"platform {cfg.platform_url}: reachable, server time {resp.get('server_time')}, "
                  f"protocol {resp.get('protocol_version')}")
        except FatalAuthError as e:
            print(f"platform {cfg.platform_url}: reachable but the node token is refused ({e})")
            rc = EXIT_AUTH
        except (TransientError, ApiError) as e:
            print(f"platform {cfg.platform_url}: NOT reachable ({e})")
            rc = EXIT_ERROR
    if not cfg.ledger.exists():
        print(f"ledger {cfg.ledger}: empty (no study seen yet)")
        return rc
    ledger = Ledger(cfg.ledger)
    rows = ledger.summary()
    if not rows:
        print(f"ledger {cfg.ledger}: no study yet")
    for s in rows:
        last = s["last_job"]
        last_s = f"job {last['job_id']} round {last['round']} {last['state']}" if last else "none"
        sigma = f"{s['noise_multiplier']:.3f}" if s["noise_multiplier"] is not None else "-"
        print(f"study {s['study_id']} {s['name']!r}: epsilon {s['epsilon_spent']:.4f} / {s['epsilon_budget']:g} "
              f"(delta {s['delta']:g}, sigma {sigma}), rounds trained {s['rounds_trained']}/{s['rounds']}, "
              f"key {'held' if s['has_key'] else 'not held'}, invitation {s['invitation'] or '-'}, last job {last_s}")
    ledger.close()
    return rc


def cmd_check(args) -> int:
    from .config import DEFAULT_DATASET, load_config
    from .tools import check, schema_from_args, study_dataset

    schema = schema_from_args(args)
    cfg = load_config(args.config)
    name = args.dataset if args.dataset is not None else study_dataset(cfg, args.study) if args.study else None
    path = cfg.dataset_path(name)
    print(f"data set {name or DEFAULT_DATASET!r}:")
    print(check(schema, path), end="")
    return EXIT_OK


def cmd_predict(args) -> int:
    from .tools import predict

    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            n = predict(args.model, args.csv, fh)
        print(f"scored {n} rows into {args.out}", file=sys.stderr)
    else:
        predict(args.model, args.csv, sys.stdout)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hospital_node",
                                description="Hospital node of the federated-learning platform")
    p.add_argument("--version", action="version", version=f"hospital_node {NODE_VERSION}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enrol", help="enrol this node with a one-time token from the portal")
    e.add_argument("--config", required=True, help="path to node.toml")
    e.add_argument("--token", required=True, help="one-time enrolment token (never logged)")
    e.add_argument("--force", action="store_true", help="replace existing credentials")
    e.set_defaults(func=cmd_enrol)
    r = sub.add_parser("run", help="run the node daemon")
    r.add_argument("--config", required=True)
    r.add_argument("--once", action="store_true", help="one cycle (heartbeat, pending uploads, one poll) then exit")
    r.add_argument("--grad-sample-mode", choices=GRAD_SAMPLE_MODES, default=None,
                   help="override node.grad_sample_mode (DP-SGD engine: fused, or an Opacus grad-sample mode)")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("status", help="enrolment, platform reachability, privacy ledger")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_status)
    c = sub.add_parser("check", help="check a data set against a study's schema (before approving it)")
    c.add_argument("--config", required=True)
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", type=int, help="a study this node was invited to")
    which.add_argument("--schema", help="a schema JSON file (from the study page)")
    c.add_argument("--dataset", default=None, help="data set name from [datasets.NAME] (default: the one the study "
                                                   "names for this hospital with --study, else 'default')")
    c.set_defaults(func=cmd_check)
    pr = sub.add_parser("predict", help="score new raw rows with a released model")
    pr.add_argument("--model", required=True, help="model.safetensors released by the platform")
    pr.add_argument("--csv", required=True, help="rows to score (the schema's feature columns)")
    pr.add_argument("--out", default=None, help="write the scores here (default: stdout)")
    pr.set_defaults(func=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalAuthError as e:
        print(f"fatal: the platform refused this node's credentials: {e}. The node token may be revoked: "
              f"ask the consortium admin, then re-enrol with `enrol --force`.", file=sys.stderr)
        return EXIT_AUTH
    except NodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except SpecError as e:
        print(f"error: invalid schema or model description: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130

"""Fuzz the REST API from its own OpenAPI schema (schemathesis): no request a node or a researcher can
send answers 5xx, and every error answer is the protocol's JSON error {"error", "code"}.

A live server on the test database, a running study (real TenSEAL set-up), a node authenticated with
its token and a researcher with a session cookie and CSRF token. The path parameters are drawn from
the real ids (plus one that does not exist) so the fuzzer reaches past the 404s into the views.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nodeclient import run_setup
from schemathesis import GenerationMode

from consortia.models import Membership
from consortia.services import membership_grant
from studies.models import Round, TrainingJob

EXAMPLES_PER_OPERATION = 12
CSRF = "fuzzcsrftoken0123456789abcdefghi"  # 32 characters: Django's CSRF secret format
UNKNOWN_ID = 987654


def _restrict_path_ids(raw: dict, ids: dict[str, list[int]]) -> dict:
    for item in raw["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param["name"] in ids:
                    param["schema"] = {"type": "integer", "enum": [*ids[param["name"]], UNKNOWN_ID]}
    return raw


def _researcher_session(world, django_user_model) -> str:
    user = django_user_model.objects.create_user(username="fuzz-researcher", password="not-used-0123")
    membership_grant(user=user, consortium=world["consortium"], role=Membership.Role.RESEARCHER)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
def fresh_throttles():
    """The fuzzer's enrolment attempts use up this process's enrolment throttle (the cache): give the
    tests after it a fresh one."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.mark.integration
def test_the_api_never_answers_5xx_and_every_error_is_json(world, eager_celery, live_server, django_user_model,
                                                          transactional_db, settings, fresh_throttles):
    settings.NODE_LONGPOLL_MAX_S = 0.2  # the fuzzer's `wait` must not hold a request for 30 s
    run_setup(world)
    study = world["study"]
    ids = {"study_id": [study.pk], "job_id": list(TrainingJob.objects.values_list("pk", flat=True)),
           "number": sorted({*Round.objects.filter(study=study).values_list("number", flat=True), 1, 2})}
    raw = requests.get(f"{live_server.url}/api/schema/", params={"format": "json"}, timeout=60).json()
    schema = schemathesis.openapi.from_dict(_restrict_path_ids(raw, ids))
    node_auth = {"Authorization": f"Token {world['a'].token}"}
    session = _researcher_session(world, django_user_model)
    researcher = {"cookies": {"sessionid": session, "csrftoken": CSRF}, "headers": {"X-CSRFToken": CSRF}}

    failures: list[str] = []
    seen: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    http = requests.Session()
    for op in operations:
        if op.path.startswith("/api/node/"):
            kwargs = {"headers": node_auth, "cookies": {}}
        else:
            kwargs = {"headers": dict(researcher["headers"]), "cookies": dict(researcher["cookies"])}
        _fuzz(op, live_server.url, http, kwargs, failures, seen)
    print("\n".join(f"{k[0]} {k[1]}: {n}" for k, n in sorted(seen.items())))
    assert failures == [], "\n".join(sorted(set(failures))[:40])
    # the fuzzer got past authentication and validation on both sides
    ok = {k[0] for k in seen if k[1] < 300}
    assert {"GET /api/studies/", "GET /api/studies/{study_id}/", "GET /api/node/work",
            "GET /api/node/studies/{study_id}/context"} <= ok, sorted(seen)


def _fuzz(op, base_url: str, http: requests.Session, auth: dict, failures: list[str], seen: Counter) -> None:
    strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

    @hsettings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
               phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case):
        headers = {**(case.headers or {}), **auth["headers"]}
        resp = case.call(base_url=base_url, session=http, headers=headers, cookies=auth["cookies"], timeout=60)
        where = f"{case.method} {case.formatted_path} -> {resp.status_code}"
        seen[(f"{op.method.upper()} {op.path}", resp.status_code)] += 1
        if resp.status_code >= 500:
            failures.append(f"{where}: {resp.text[:300]}")
        elif resp.status_code >= 400:
            try:
                body = json.loads(resp.content)
            except ValueError:
                body = None
            if not (isinstance(body, dict) and set(body) == {"error", "code"}):
                failures.append(f"{where}: not the JSON error form: {resp.text[:200]!r}")

    fuzz()

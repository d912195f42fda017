"""Helpers and fixtures of tests/portal (imported by name: every conftest module is called
`conftest`, so tests must not import from one).

Portal test world: two consortia, hospitals, one user per role, studies in several states."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from consortia.models import Membership
from consortia.services import consortium_create, hospital_create, membership_grant
from studies import services
from studies.models import FinalModel

Role = Membership.Role
SCHEMA = {"task": "binary_classification",
          "features": [{"name": "age", "type": "float"}, {"name": "bmi", "type": "float"}],
          "label": {"name": "outcome", "type": "binary"}}
PASSWORD = "correct horse battery staple"


def make_study(consortium, name, hospitals, *, start=True, quorum=1):
    s = services.study_create(consortium=consortium, name=name, hospitals=hospitals, schema=SCHEMA,
                              model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=16,
                              learning_rate=0.1, privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
                              encryption={"codec": "bfv-packed-v1"}, quorum=quorum, round_deadline_s=60, seed=1)
    if start:
        services.study_open_recruitment(study=s, actor="test")
    return s


class World:
    pass


@pytest.fixture
def fast_hashing(settings):
    # Argon2 is the production hasher (settings); tests that do not log in with a password skip its cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(db, django_user_model, fast_hashing):
    w = World()
    w.c1 = consortium_create(name="North consortium")
    w.c2 = consortium_create(name="South consortium")
    w.h1 = hospital_create(consortium=w.c1, name="Alpha Hospital", max_epsilon=2.0, allowed_models=["logistic_regression"])
    w.h2 = hospital_create(consortium=w.c1, name="Beta Hospital")
    w.h3 = hospital_create(consortium=w.c2, name="Gamma Hospital")

    def user(name, consortium, role, hospital=None, **extra):
        u = django_user_model.objects.create_user(username=name, password=PASSWORD, **extra)
        membership_grant(user=u, consortium=consortium, role=role, hospital=hospital)
        return u

    w.users = {
        "cadmin": user("cadmin", w.c1, Role.CONSORTIUM_ADMIN, is_staff=True),
        "researcher": user("researcher", w.c1, Role.RESEARCHER),
        "auditor": user("auditor", w.c1, Role.AUDITOR),
        "hadmin1": user("hadmin1", w.c1, Role.HOSPITAL_ADMIN, w.h1),
        "hadmin2": user("hadmin2", w.c1, Role.HOSPITAL_ADMIN, w.h2),
        "outsider": user("outsider", w.c2, Role.RESEARCHER),
        "hadmin3": user("hadmin3", w.c2, Role.HOSPITAL_ADMIN, w.h3),
    }
    w.s1 = make_study(w.c1, "Sepsis alpha", [w.h1])          # recruiting, invites Alpha only
    w.s2 = make_study(w.c1, "Stroke beta", [w.h2])           # recruiting, invites Beta only
    w.both = make_study(w.c1, "Joint study", [w.h1, w.h2])   # recruiting, invites both
    w.draft = make_study(w.c1, "Draft alpha", [w.h1], start=False)
    w.s3 = make_study(w.c2, "Gamma study", [w.h3])
    w.p1 = w.s1.participations.get(hospital=w.h1)
    w.p2 = w.s2.participations.get(hospital=w.h2)
    w.p3 = w.s3.participations.get(hospital=w.h3)
    # A released model for s1 (file on disk), to test downloads.
    d = Path(settings.MEDIA_ROOT) / "models"
    d.mkdir(parents=True, exist_ok=True)
    (d / "portal_test.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    FinalModel.objects.create(study=w.s1, path="models/portal_test.safetensors", sha256="a" * 64, size_bytes=16,
                              uploaded_by=w.h1, round_number=2)
    return w

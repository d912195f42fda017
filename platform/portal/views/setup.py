"""The first-run page: on a fresh install (no consortium has an admin yet) it creates the first
consortium and its admin, the same as `manage.py bootstrap`. Once an admin exists it answers 404.

Two people submitting at once cannot both become the first admin: the check and the creation run
in one transaction under a lock (PostgreSQL advisory lock; SQLite transactions are serialised).
With FEDPLATFORM_SETUP_CODE set, the page also asks for that code.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.db import connection, transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from consortia.models import Membership
from consortia.services import consortium_create, membership_grant
from studies import access

from ..people_forms import SetupForm

SETUP_LOCK = 0x5E7F1257  # pg_advisory_xact_lock key of the first run
ACTOR = "setup"


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [SETUP_LOCK])


@never_cache
@require_http_methods(["GET", "POST"])
def setup(request):
    if not access.first_run_open():
        raise Http404("the platform is set up: sign in")
    need_code = bool(settings.SETUP_CODE)
    form = SetupForm(request.POST or None, need_code=need_code)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        if need_code and not hmac.compare_digest(d.get("code", "").encode(), settings.SETUP_CODE.encode()):
            form.add_error("code", "this is not the setup code the platform was started with")
        else:
            with transaction.atomic():
                _lock()
                if not access.first_run_open():
                    raise Http404("someone else set the platform up a moment ago: sign in")
                first, _, last = d["full_name"].strip().partition(" ")
                admin = get_user_model().objects.create_user(
                    username=d["email"].lower(), email=d["email"], password=d["password1"], first_name=first[:150],
                    last_name=last[:150])
                consortium = consortium_create(name=d["consortium"].strip(), description=d["description"], actor=ACTOR)
                membership_grant(user=admin, consortium=consortium, role=Membership.Role.CONSORTIUM_ADMIN, actor=ACTOR)
            login(request, admin, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"{consortium.name} is set up and you are its admin. Next: add the hospitals, "
                                      "then invite the researchers, hospital admins and auditors.")
            return redirect("portal:hospitals")
    return render(request, "portal/setup.html", {"form": form}, status=422 if request.method == "POST" else 200)

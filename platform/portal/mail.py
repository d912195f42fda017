"""E-mails the portal sends (Django's e-mail backend: the console by default, SMTP by settings).

A link is built from the request that asked for it (the host the person used) unless
FEDPLATFORM_PUBLIC_URL says where the portal is published. A failure to send is reported to the
caller (the admin sees it and can send the invitation again), never swallowed.
"""

from __future__ import annotations

import logging
import smtplib

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from consortia.people import display_name

log = logging.getLogger(__name__)


def absolute(request, path: str) -> str:
    base = settings.PUBLIC_URL or f"{request.scheme}://{request.get_host()}"
    return base.rstrip("/") + path


def _send(*, to: str, subject: str, template: str, ctx: dict) -> str:
    """'' when sent, else a sentence saying why not (the link itself is never logged)."""
    body = render_to_string(template, ctx)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to], fail_silently=False)
    except (smtplib.SMTPException, OSError) as exc:
        log.warning("could not send %r to a user: %s", subject, exc.__class__.__name__)
        return f"the e-mail could not be sent ({exc.__class__.__name__}); check the mail settings, then send it again"
    return ""


def send_invitation(request, *, user, token: str | None, consortium, role_label: str, by) -> str:
    link = absolute(request, reverse("portal:password_set_link", args=[token])) if token else \
        absolute(request, reverse("portal:login"))
    return _send(to=user.email, subject=f"You are invited to {consortium.name}",
                 template="portal/email/invitation.txt",
                 ctx={"name": display_name(user), "consortium": consortium, "role": role_label,
                      "by": display_name(by), "link": link, "new": token is not None, "username": user.get_username()})


def send_password_reset(request, *, user, token: str) -> str:
    return _send(to=user.email, subject="Set a new password", template="portal/email/password_reset.txt",
                 ctx={"name": display_name(user), "username": user.get_username(),
                      "link": absolute(request, reverse("portal:password_set_link", args=[token]))})

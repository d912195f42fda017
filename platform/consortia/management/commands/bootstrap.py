"""Create the first consortium and its admin on a fresh install.

    python manage.py bootstrap --consortium NAME --admin USERNAME --email EMAIL [--password-file FILE]

The password is asked twice on the terminal, or read from the first line of --password-file (a
secret mounted by an orchestrator, say); never from the command line, where other users of the
machine and the shell history would see it. The admin gets a consortium-admin membership and is a
Django superuser; the next people are invited on the portal's People page (the portal's first-run
page, /setup/, does the same as this command from a browser). Everything happens in one
transaction, with the audit events written by consortia.services; an existing consortium or
username is refused and nothing is changed.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.migrations.executor import MigrationExecutor

from consortia.models import Consortium, Membership
from consortia.services import consortium_create, membership_grant

ACTOR = "bootstrap"  # the audit trail's actor for what this command creates (like "demo" for the demo)


class Command(BaseCommand):
    help = ("Create the first consortium and its admin (a consortium admin who is also a Django superuser). "
            "The password is asked on the terminal or read from --password-file, never from the command line.")

    def add_arguments(self, parser):
        parser.add_argument("--consortium", required=True, help="name of the new consortium")
        parser.add_argument("--admin", required=True, help="username of its first admin (a new account)")
        parser.add_argument("--email", required=True, help="the admin's e-mail address")
        parser.add_argument("--description", default="", help="what the consortium is for (optional)")
        parser.add_argument("--password-file", type=Path,
                            help="file whose first line is the admin's password (default: ask on the terminal)")

    def handle(self, *args, **opts):
        self._require_migrated()
        name, username, email = self._check_input(opts["consortium"], opts["admin"], opts["email"])
        user_model = get_user_model()
        if Consortium.objects.filter(name__iexact=name).exists():
            raise CommandError(f"a consortium named {name!r} already exists: nothing was changed. Choose another "
                               "name, or sign in to the portal as its admin to add hospitals and users.")
        if user_model.objects.filter(username__iexact=username).exists():
            raise CommandError(f"a user named {username!r} already exists: nothing was changed. Choose another "
                               "--admin, or invite the existing user on the portal's People page.")
        password = self._password(opts["password_file"])
        try:
            validate_password(password, user=user_model(username=username, email=email))
        except ValidationError as exc:
            raise CommandError("the password was refused: " + " ".join(exc.messages)) from None
        try:
            with transaction.atomic():
                admin = user_model.objects.create_user(username=username, email=email, password=password,
                                                       is_staff=True, is_superuser=True)
                consortium = consortium_create(name=name, description=opts["description"], actor=ACTOR)
                membership_grant(user=admin, consortium=consortium, role=Membership.Role.CONSORTIUM_ADMIN, actor=ACTOR)
        except IntegrityError:  # created by someone else between the checks above and now
            raise CommandError(f"the consortium {name!r} or the user {username!r} was created meanwhile: "
                               "nothing was changed") from None
        self.stdout.write(self.style.SUCCESS(
            f"Created consortium {consortium.name!r} (id {consortium.pk}) and its admin {admin.username!r}."))
        self.stdout.write("Next: start the platform (make serve), sign in at /login/ as this admin, create the "
                          "hospitals (Hospitals page) and give each one an enrolment token for its node.")

    @staticmethod
    def _require_migrated() -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database is not migrated yet: run `python manage.py migrate` first "
                               "(`make serve` also does it)")

    @staticmethod
    def _check_input(name: str, username: str, email: str) -> tuple[str, str, str]:
        name, username, email = name.strip(), username.strip(), email.strip()
        max_name = Consortium._meta.get_field("name").max_length
        if not name or len(name) > max_name:
            raise CommandError(f"--consortium must be a name of 1 to {max_name} characters")
        user_model = get_user_model()
        field = user_model._meta.get_field(user_model.USERNAME_FIELD)
        try:
            if not username:
                raise ValidationError("empty")
            field.run_validators(username)
        except ValidationError:
            raise CommandError(f"--admin {username!r} is not a valid username: use 1 to {field.max_length} letters, "
                               "digits and @/./+/-/_ only") from None
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--email {email!r} is not a valid e-mail address") from None
        return name, username, email

    def _password(self, path: Path | None) -> str:
        if path is not None:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read --password-file {path}: {exc.__class__.__name__}") from None
            if not lines or not lines[0]:
                raise CommandError(f"--password-file {path} is empty: its first line must be the password")
            return lines[0]
        if not sys.stdin.isatty():
            raise CommandError("no password: give --password-file FILE (its first line is the password), or run "
                               "the command in a terminal to be asked for it")
        first = getpass.getpass("Password for the consortium admin: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("the two passwords differ: nothing was changed")
        if not first:
            raise CommandError("the password is empty: nothing was changed")
        return first

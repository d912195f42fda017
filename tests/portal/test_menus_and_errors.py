"""Menus show what the role can open (and every link they show opens); error pages are the
portal's, say what to do next; a form survives a CSRF failure, a forged one does not get resent."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from studies.models import Study

pytestmark = pytest.mark.django_db

MENU = {  # user -> the header links they see
    "cadmin": {"Dashboard", "New study", "Hospitals", "Audit trail", "People", "Raw data (admin)"},
    "researcher": {"Dashboard", "New study", "Hospitals"},
    "auditor": {"Dashboard", "Hospitals", "Audit trail"},
    "hadmin1": {"Dashboard", "Hospitals", "Inbox"},
}


def _nav(html: str) -> dict[str, str]:
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', html, re.S).group(1)
    return {text.strip(): href for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav)}


@pytest.mark.parametrize("name", list(MENU))
def test_menus_show_exactly_what_the_role_can_open(world, client, name):
    client.force_login(world.users[name])
    links = _nav(client.get("/").content.decode())
    assert set(links) == MENU[name]
    for text, href in links.items():
        status = client.get(href).status_code
        assert status == 200, (text, href, status)


def test_a_person_without_a_role_sees_no_links_that_answer_403(world, client, django_user_model):
    nobody = django_user_model.objects.create_user(username="nobody", password="x" * 12)
    client.force_login(nobody)
    assert set(_nav(client.get("/").content.decode())) == {"Dashboard"}
    page = client.get("/hospitals/")
    assert page.status_code == 403 and "ask a consortium admin to invite you" in page.content.decode()
    assert "<header" in page.content.decode()   # in the portal's look


def test_error_pages_are_the_portals_and_say_what_to_do(world, client):
    client.force_login(world.users["researcher"])
    nf = client.get("/studies/999999/")
    assert nf.status_code == 404 and "Page not found" in nf.content.decode() and 'href="/"' in nf.content.decode()
    forbidden = client.get(f"/hospitals/{world.h1.pk}/")
    body = forbidden.content.decode()
    assert forbidden.status_code == 403 and "consortium admin" in body and "Go to the dashboard" in body
    not_allowed = client.get(f"/studies/{world.s1.pk}/cancel/")
    assert not_allowed.status_code == 405 and not_allowed["Allow"] == "POST"
    assert "not for opening directly" in not_allowed.content.decode()
    # The API keeps its JSON errors.
    api = client.get("/api/studies/1/start")
    assert api.status_code == 405 and api["Content-Type"].startswith("application/json")


def test_the_500_page_is_the_portals_and_needs_no_database(client, settings):
    from django.template.loader import get_template

    html = get_template("500.html").render()
    assert "Something went wrong" in html and "portal.css" in html


def test_a_form_survives_a_csrf_failure_and_can_be_sent_again(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world.users["researcher"])
    c.get("/studies/new/")   # the form page sets the CSRF cookie
    r = c.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "recruited elsewhere", "csrfmiddlewaretoken": "stale" * 8},
               HTTP_ORIGIN="http://testserver")
    html = r.content.decode()
    assert r.status_code == 403 and "This form had expired" in html and "nothing was changed" in html
    assert 'value="recruited elsewhere"' in html and "stale" not in html
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    again = c.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "recruited elsewhere", "csrfmiddlewaretoken": token})
    assert again.status_code == 302
    assert Study.objects.get(pk=world.draft.pk).status == Study.Status.CANCELLED


def test_a_forged_cross_site_post_is_not_offered_for_resending(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world.users["researcher"])
    c.get("/studies/new/")
    r = c.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "forged"}, HTTP_ORIGIN="http://evil.example")
    html = r.content.decode()
    assert r.status_code == 403 and "did not come from a page of this portal" in html
    assert "forged" not in html and "Send it again" not in html
    r = c.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "forged"}, HTTP_SEC_FETCH_SITE="cross-site")
    assert "Send it again" not in r.content.decode()
    assert Study.objects.get(pk=world.draft.pk).status == Study.Status.DRAFT


def test_passwords_are_never_echoed_by_the_csrf_page(world):
    c = Client(enforce_csrf_checks=True)
    c.get("/login/")
    r = c.post("/password/set/", {"password1": "my secret pass", "password2": "my secret pass"},
               HTTP_ORIGIN="http://testserver")
    assert r.status_code == 403 and "my secret pass" not in r.content.decode()
    assert "Passwords and codes are never kept" in r.content.decode()

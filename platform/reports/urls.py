"""Audit views: study audit report (HTML/PDF), chain export and the trail (read-only), under /audit/.
The URL namespace stays "audit" (the pages' names did not change when they moved to this app)."""

from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("trail/", views.trail, name="trail"),
    path("events/<int:event_id>/", views.event_detail, name="event"),
    path("studies/<int:study_id>/report/", views.study_report, name="study_report"),
    path("studies/<int:study_id>/report.pdf", views.study_report_pdf, name="study_report_pdf"),
    path("studies/<int:study_id>/export.jsonl", views.study_export, name="study_export"),
]

from django.urls import path, re_path

from . import views

app_name = "portal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("hospitals/", views.hospitals, name="hospitals"),
    path("hospitals/<int:hospital_id>/", views.hospital_detail, name="hospital"),
    path("hospitals/<int:hospital_id>/token/", views.hospital_token, name="hospital_token"),
    path("hospitals/<int:hospital_id>/revoke/", views.hospital_revoke, name="hospital_revoke"),
    path("studies/new/", views.study_new, name="study_new"),
    path("studies/privacy-preview/", views.privacy_preview, name="privacy_preview"),
    path("studies/<int:study_id>/", views.study_detail, name="study"),
    path("studies/<int:study_id>/live/", views.study_live, name="study_live"),
    path("studies/<int:study_id>/charts/metrics.svg", views.chart_metrics, name="chart_metrics"),
    path("studies/<int:study_id>/charts/privacy.svg", views.chart_privacy, name="chart_privacy"),
    path("studies/<int:study_id>/model/", views.model_download, name="model_download"),
    path("studies/<int:study_id>/model-card/", views.model_card, name="model_card"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/(?P<action>start|pause|resume|cancel)/$", views.study_action,
            name="study_action"),
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/<int:participation_id>/", views.invitation, name="invitation"),
]

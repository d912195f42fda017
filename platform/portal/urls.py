from django.urls import path, re_path

from .views import dashboard, hospitals, inbox, login, studies

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("login/", login.login_view, name="login"),
    path("logout/", login.logout_view, name="logout"),
    path("hospitals/", hospitals.hospitals, name="hospitals"),
    path("hospitals/<int:hospital_id>/", hospitals.hospital_detail, name="hospital"),
    path("hospitals/<int:hospital_id>/token/", hospitals.hospital_token, name="hospital_token"),
    path("hospitals/<int:hospital_id>/revoke/", hospitals.hospital_revoke, name="hospital_revoke"),
    path("studies/new/", studies.study_new, name="study_new"),
    path("studies/privacy-preview/", studies.privacy_preview, name="privacy_preview"),
    path("studies/<int:study_id>/", studies.study_detail, name="study"),
    path("studies/<int:study_id>/live/", studies.study_live, name="study_live"),
    path("studies/<int:study_id>/charts/metrics.svg", studies.chart_metrics, name="chart_metrics"),
    path("studies/<int:study_id>/charts/privacy.svg", studies.chart_privacy, name="chart_privacy"),
    path("studies/<int:study_id>/model/", studies.model_download, name="model_download"),
    path("studies/<int:study_id>/model-card/", studies.model_card, name="model_card"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/(?P<action>start|pause|resume|cancel)/$", studies.study_action,
            name="study_action"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/release/(?P<action>rerun|override)/$", studies.release_resolve,
            name="release_resolve"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/<int:participation_id>/", inbox.invitation, name="invitation"),
]

from django.urls import path, re_path

from .views import account, dashboard, hospitals, inbox, login, people, setup, studies

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("login/", login.login_view, name="login"),
    path("logout/", login.logout_view, name="logout"),
    path("hospitals/", hospitals.hospitals, name="hospitals"),
    path("hospitals/<int:hospital_id>/", hospitals.hospital_detail, name="hospital"),
    path("hospitals/<int:hospital_id>/token/", hospitals.hospital_token, name="hospital_token"),
    path("hospitals/<int:hospital_id>/revoke/", hospitals.hospital_revoke, name="hospital_revoke"),
    path("hospitals/<int:hospital_id>/limits/", hospitals.hospital_limits, name="hospital_limits"),
    path("hospitals/<int:hospital_id>/tokens/<int:token_id>/revoke/", hospitals.hospital_token_revoke,
         name="hospital_token_revoke"),
    path("setup/", setup.setup, name="setup"),
    path("people/", people.people_page, name="people"),
    path("people/<int:membership_id>/role/", people.member_change, name="member_change"),
    path("people/<int:membership_id>/remove/", people.member_remove, name="member_remove"),
    path("people/<int:membership_id>/resend/", people.member_resend, name="member_resend"),
    path("account/", account.account, name="account"),
    path("account/tokens/<int:token_id>/revoke/", account.api_token_revoke, name="api_token_revoke"),
    path("password/reset/", account.password_reset, name="password_reset"),
    path("password/set/", account.password_set, name="password_set"),
    path("password/set/<str:token>/", account.password_set_link, name="password_set_link"),
    path("studies/new/", studies.study_new, name="study_new"),
    path("studies/privacy-preview/", studies.privacy_preview, name="privacy_preview"),
    path("studies/<int:study_id>/", studies.study_detail, name="study"),
    path("studies/<int:study_id>/live/", studies.study_live, name="study_live"),
    path("studies/<int:study_id>/charts/metrics.svg", studies.chart_metrics, name="chart_metrics"),
    path("studies/<int:study_id>/charts/privacy.svg", studies.chart_privacy, name="chart_privacy"),
    path("studies/<int:study_id>/model/", studies.model_download, name="model_download"),
    path("studies/<int:study_id>/model-card/", studies.model_card, name="model_card"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/results\.(?P<fmt>csv|json)$", studies.study_results, name="study_results"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/(?P<action>start|pause|resume|cancel)/$", studies.study_action,
            name="study_action"),
    re_path(r"^studies/(?P<study_id>[0-9]+)/release/(?P<action>rerun|override)/$", studies.release_resolve,
            name="release_resolve"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/<int:participation_id>/", inbox.invitation, name="invitation"),
]

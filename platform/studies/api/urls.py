from django.urls import path

from . import node, node_rounds, node_secagg, researcher

node_urls = [
    path("enrol", node.EnrolView.as_view()),
    path("heartbeat", node.HeartbeatView.as_view()),
    path("work", node.WorkView.as_view()),
    path("studies/<int:study_id>/decision", node.DecisionView.as_view()),
    path("studies/<int:study_id>/context", node.ContextView.as_view()),
    path("studies/<int:study_id>/sealed-keys", node.SealedKeysView.as_view()),
    path("studies/<int:study_id>/sealed-key", node.SealedKeyView.as_view()),
    path("studies/<int:study_id>/key-ack", node.KeyAckView.as_view()),
    path("jobs/<int:job_id>/refuse", node.RefuseView.as_view()),
    path("jobs/<int:job_id>/privacy-spend", node.PrivacySpendView.as_view()),
    path("jobs/<int:job_id>/update", node.UpdateView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/aggregate", node_rounds.AggregateView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/uploads", node_rounds.RoundUploadsView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/uploads/<int:job_id>", node_rounds.RoundUploadView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/poison-report", node_rounds.PoisonReportView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/report", node_rounds.RoundReportView.as_view()),
    path("studies/<int:study_id>/final-model", node_rounds.FinalModelView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/setup", node_secagg.SecAggSetupView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/advert", node_secagg.SecAggAdvertView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/directory", node_secagg.SecAggDirectoryView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/shares", node_secagg.SecAggSharesView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/inbox", node_secagg.SecAggInboxView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/unmask", node_secagg.SecAggUnmaskView.as_view()),
    path("studies/<int:study_id>/rounds/<int:number>/secagg/correction", node_secagg.SecAggCorrectionView.as_view()),
]

researcher_urls = [
    path("studies/", researcher.StudyListView.as_view()),
    path("studies/schema-draft", researcher.SchemaDraftView.as_view()),
    path("studies/<int:study_id>/", researcher.StudyDetailView.as_view()),
    path("studies/<int:study_id>/model", researcher.FinalModelDownloadView.as_view()),
    path("studies/<int:study_id>/results", researcher.StudyResultsView.as_view()),
    path("studies/<int:study_id>/<str:action>", researcher.StudyActionView.as_view()),
]

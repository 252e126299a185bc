from __future__ import annotations

from django.urls import path

import rollouts.flags_as_code.views as contract_views
from rollouts import flag_change_views, incident_views, propose_views, segment_views, views
from rollouts.plans import views as plan_views

app_name = "rollouts"

_flag = "p/<slug:project_key>/flags/<slug:flag_key>/"
_change = "p/<slug:project_key>/changes/<int:pk>/"

urlpatterns = [
    path("changes/", views.inbox, name="inbox"),
    path("changes/waiting-count/", views.nav_approvals, name="nav_approvals"),
    path(_flag + "propose/<slug:environment_key>/", propose_views.targeting_propose, name="targeting_propose"),
    path(_flag + "propose/<slug:environment_key>/preview/", propose_views.targeting_preview, name="targeting_preview"),
    path(_flag + "killswitch/<slug:environment_key>/", incident_views.killswitch, name="killswitch"),
    path(_flag + "change-control/", incident_views.flag_control, name="flag_control"),
    path(_flag + "change-contract/", flag_change_views.contract_change, name="contract_change"),
    path(_flag + "variations/<slug:variation_key>/change/", flag_change_views.variation_change,
         name="variation_change"),
    path(_change, views.change_request_detail, name="change_request"),
    path(_change + "approve/", views.change_request_approve, name="change_request_approve"),
    path(_change + "reject/", views.change_request_reject, name="change_request_reject"),
    path(_change + "comment/", views.change_request_comment, name="change_request_comment"),
    path(_change + "apply/", views.change_request_apply, name="change_request_apply"),
    path(_change + "schedule/", views.change_request_schedule, name="change_request_schedule"),
    path(_change + "cancel/", views.change_request_cancel, name="change_request_cancel"),
    path("p/<slug:project_key>/segments/new/", segment_views.segment_create, name="segment_create"),
    path("p/<slug:project_key>/segments/<slug:segment_key>/", segment_views.segment_edit, name="segment_edit"),
    path("p/<slug:project_key>/incidents/", incident_views.incidents, name="incidents"),
    path("p/<slug:project_key>/incidents/preview/", incident_views.incident_preview, name="incident_preview"),
    path("p/<slug:project_key>/incidents/<int:pk>/lift/", incident_views.incident_lift, name="incident_lift"),
    path("p/<slug:project_key>/follow-ups/<int:pk>/acknowledge/", incident_views.follow_up_acknowledge,
         name="follow_up_acknowledge"),
    path("p/<slug:project_key>/approval-policy/", views.approval_policies, name="approval_policies"),
]

# Flags as code
urlpatterns += [
    path(_flag + "contract.yaml", contract_views.contract_export, name="contract_export"),
    path("p/<slug:project_key>/contracts.yaml", contract_views.contracts_export, name="contracts_export"),
    path("p/<slug:project_key>/contracts/import/", contract_views.contracts_import, name="contracts_import"),
]

# Rollout plans
_plan = "p/<slug:project_key>/rollouts/<int:pk>/"
urlpatterns += [
    path("p/<slug:project_key>/rollouts/", plan_views.plan_board, name="plan_board"),
    path(_flag + "rollout-plan/new/", plan_views.plan_create, name="plan_create"),
    path(_plan, plan_views.plan_detail, name="plan_detail"),
    path(_plan + "<slug:action>/", plan_views.plan_action, name="plan_action"),
]

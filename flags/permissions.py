"""Who may see and change what: every permission rule of the console, in one place.

Roles (flags.Membership rows) are named sets of django-guardian object permissions on the
Project (flags.constants.ROLE_PERMISSIONS); a flag's owner also holds `edit_flag` on that
flag. Checks read the permission rows directly, once per project per request, and do not
treat superusers specially: superusers administer the site, the console follows roles.

A `Rule` is one predicate and the message a refused person reads. Views ask
`RULE.allows(user, obj)` and answer `denied(request, RULE.refusal)`; services call
`RULE.require(actor, obj)`, which raises `Refused` (a ValidationError with code "forbidden");
the API answers 403 with the same message. System jobs (an actor that is a label, not a user)
pass only where the service says they carry out a decision already taken (`system=True`). The rules cover change control and
rollout plans too: they read only the project, flag and requester of the object they are
given, so this module imports nothing of `rollouts` and every app can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from flags.constants import FLAG_OWNER_PERMISSION, Role
from flags.models import AccessToken, Environment, Flag, FlagUserObjectPermission, Project, ProjectUserObjectPermission

User = AbstractBaseUser | AnonymousUser


def project_permissions(user: User, project: Project) -> frozenset[str]:
    """The permission codenames a user holds on a project; cached on the user for the request."""
    if not user.is_authenticated:
        return frozenset()
    cache: dict[int, frozenset[str]] = user.__dict__.setdefault("_featureops_project_perms", {})
    if project.pk not in cache:
        cache[project.pk] = frozenset(
            ProjectUserObjectPermission.objects.filter(user=user, content_object=project)
            .values_list("permission__codename", flat=True)
        )
    return cache[project.pk]


def has_project_permission(user: User, project: Project, codename: str) -> bool:
    return codename in project_permissions(user, project)


def _owns(user: User, flag: Flag) -> bool:
    """Owner rights need the owner to still be a member, and not only an auditor: auditors
    change nothing, even on a flag someone named them owner of."""
    if not user.is_authenticated:
        return False
    if not roles_in(user, flag.project) - {Role.AUDITOR}:
        return False
    return FlagUserObjectPermission.objects.filter(
        user=user, content_object=flag, permission__codename=FLAG_OWNER_PERMISSION).exists()


def roles_in(user: User, project: Project) -> set[str]:
    if not user.is_authenticated:
        return set()
    return set(project.memberships.filter(user=user).values_list("role", flat=True))


def projects_with(user: User, codename: str) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    return Project.objects.filter(
        pk__in=ProjectUserObjectPermission.objects.filter(user=user, permission__codename=codename)
        .values("content_object_id"))


def visible_projects(user: User) -> QuerySet[Project]:
    return projects_with(user, "view_project")


def can_view_project(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "view_project")


def can_edit_catalog(user: User, project: Project, flag: Flag | None = None) -> bool:
    """Create and edit flags, variations and segments (editor role), or this flag (its owner)."""
    if has_project_permission(user, project, "edit_catalog"):
        return True
    return flag is not None and _owns(user, flag)


def can_edit_targeting(user: User, environment: Environment, flag: Flag) -> bool:
    """The plain targeting editor: non-governed environments only. Governed ones take
    proposals (rollouts), which apply at once or become change requests."""
    return not environment.is_governed and can_edit_catalog(user, environment.project, flag)


def can_manage_members(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "manage_members")


def can_manage_sdk_keys(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "manage_sdk_keys")


def audit_project_ids(user: User, codename: str = "view_audit") -> frozenset[int]:
    """Projects whose whole audit trail the user may browse (view_audit) or export (export_audit):
    auditors' and project admins'."""
    return frozenset(projects_with(user, codename).values_list("pk", flat=True))


def sees_account_events(user: User) -> bool:
    """Whether the user may read the audit rows that belong to no project: sign-ins (failed and
    throttled ones too), sign-outs, account and group changes in the admin, exports of the whole
    trail. They concern the whole console, so view_account_audit on any one project opens them
    (the auditor role holds it; project admins do not). Superusers read them in the admin."""
    if not user.is_authenticated:
        return False
    return ProjectUserObjectPermission.objects.filter(user=user, permission__codename="view_account_audit").exists()


def can_read_audit_event(user: User, event: Any) -> bool:
    """One audit row: a project's rows for who browses that project's trail, rows of no project
    for who sees account events, and a flag's rows for anyone who may view the flag (its History
    tab shows them). The console's event detail and the API's ask this."""
    if event.project_id is None:
        return sees_account_events(user)
    if event.project_id in audit_project_ids(user):
        return True
    if event.flag_id is None:
        return False
    project = Project.objects.filter(pk=event.project_id).first()
    return project is not None and can_view_project(user, project)


def role_labels(user: User, project: Project) -> list[str]:
    return [Role(role).label for role in sorted(roles_in(user, project))]


def holders_of(project: Project, codename: str) -> QuerySet:
    """The active users who hold a permission on a project (e.g. every approver, to notify)."""
    return get_user_model().objects.filter(
        is_active=True,
        pk__in=ProjectUserObjectPermission.objects.filter(content_object=project, permission__codename=codename)
        .values("user_id"),
    )


def principal_ids(user_ids: set[int | None]) -> dict[int, int]:
    """Who answers for each user: a service token's account answers to the person who created the
    token, everyone else to themself. Change control compares these, so one person's tokens never
    approve that person's request, nor count twice towards one."""
    ids = {pk for pk in user_ids if pk is not None}
    answering = dict(AccessToken.objects.filter(kind=AccessToken.Kind.SERVICE, user_id__in=ids,
                                                created_by__isnull=False)
                     .values_list("user_id", "created_by_id"))
    return {pk: answering.get(pk, pk) for pk in ids}


def approvers_other_than(project: Project, user_id: int | None) -> QuerySet:
    """Who can approve what `user_id` asks for: active holders of the approver role in the
    project, never the person asking."""
    return holders_of(project, "approve_change").exclude(pk=user_id)


def steers(user: User, flag: Flag) -> bool:
    """Flag owners and editors propose any change to a flag, plan its rollout, carry out its
    approved requests (the `propose_change` permission, or catalog rights on the flag)."""
    return (has_project_permission(user, flag.project, "propose_change")
            or can_edit_catalog(user, flag.project, flag))


PARTICIPANT_PERMISSIONS = ("approve_change", "propose_change", "flip_killswitch")


def participation(user: User, project: Project) -> set[str]:
    """The permissions by which someone takes part in changes (not viewers, not auditors)."""
    return {c for c in PARTICIPANT_PERMISSIONS if has_project_permission(user, project, c)}


def can_view_system_status(user: User) -> bool:
    """System status (workers, queues, task failures): site staff and superusers, who run the
    installation, and project admins (PRODUCT.md's platform admin), whose scheduled applies and
    guardrail pauses stop when a worker does. Cached on the user: the navigation asks on every page."""
    if not user.is_authenticated or not user.is_active:
        return False
    if getattr(user, "is_staff", False) or getattr(user, "is_superuser", False):
        return True
    cached = user.__dict__.get("_featureops_system_status")
    if cached is None:
        # manage_environments: held by the project admin role alone (flags.constants.ROLE_PERMISSIONS)
        cached = user.__dict__["_featureops_system_status"] = projects_with(user, "manage_environments").exists()
    return cached


# --- the rules ------------------------------------------------------------------------------

class Refused(ValidationError):
    """A person asked for something a rule does not allow them."""


@dataclass(frozen=True)
class Rule:
    test: Callable[..., bool]
    refusal: str

    def allows(self, user: User, *objects: Any) -> bool:
        return self.test(user, *objects)

    def require(self, actor: Any, *objects: Any, system: bool = False) -> None:
        """Refuse a person the rule does not allow. A system job (an actor that is a label, not
        a user) passes only where its caller says it carries out a decision already taken
        (`system=True`: scheduled applies, guardrail pauses); anywhere else it is refused."""
        if not isinstance(actor, AbstractBaseUser):
            if system:
                return
            raise Refused(self.refusal, code="forbidden")
        if not self.test(actor, *objects):
            raise Refused(self.refusal, code="forbidden")


def _holds(codename: str) -> Callable[[User, Project], bool]:
    return lambda user, project: has_project_permission(user, project, codename)


def _edits_flag(user: User, flag: Flag) -> bool:
    return can_edit_catalog(user, flag.project, flag)


def _edits_targeting(user: User, flag: Flag, environment: Environment) -> bool:
    return can_edit_targeting(user, environment, flag)


def _proposes(user: User, flag: Flag, environment: Environment) -> bool:
    """Flag owners and editors propose any change; in a governed environment operators use the
    same page to move traffic towards the fallback (the service refuses them anything riskier)."""
    return steers(user, flag) or (environment.is_governed and has_project_permission(user, flag.project, "flip_killswitch"))


def _carries(user: User, change_request: Any) -> bool:
    """Who applies or schedules an approved request: the flag's owner or an editor (for a
    segment, an editor); a requester who lost the role may not."""
    if change_request.flag_id:
        return steers(user, change_request.flag)
    return (has_project_permission(user, change_request.project, "propose_change")
            or can_edit_catalog(user, change_request.project))


def _is_requester(user: User, change_request: Any) -> bool:
    return user.is_authenticated and change_request.requester_id == user.pk


def _takes_part(user: User, project: Project) -> bool:
    return bool(participation(user, project))


# The catalog
CREATE_FLAGS = Rule(_holds("edit_catalog"),
                    "You need the flag owner or editor role in this project to create flags.")
EDIT_CONTRACT = Rule(_edits_flag, "You may not edit this flag's contract.")
ARCHIVE_FLAG = Rule(_edits_flag, "Archiving needs the flag owner or editor role in this project.")
EDIT_VARIATIONS = Rule(_edits_flag, "You may not edit this flag's variations.")
ADD_VARIATIONS = Rule(_edits_flag, "You may not add variations to this flag.")
DELETE_VARIATIONS = Rule(_edits_flag, "You may not delete this flag's variations.")
EDIT_TARGETING = Rule(_edits_targeting, "You may not edit this flag's targeting.")
TOGGLE_FLAG = Rule(_edits_targeting, "You may not turn this flag on or off.")
EDIT_SEGMENTS = Rule(can_edit_catalog,
                     "You need the flag owner or editor role in this project to edit segments.")
DELETE_SEGMENTS = Rule(can_edit_catalog, "You may not delete segments in this project.")
IMPORT_CONTRACTS = Rule(_holds("edit_catalog"),
                        "Importing contracts needs the flag owner / editor role in this project.")

# The project's administration
MANAGE_MEMBERS = Rule(can_manage_members, "Members and roles are managed by the project's admins.")
CHANGE_PROJECT_SETTINGS = Rule(can_manage_members, "Project settings are changed by the project's admins.")
MANAGE_SDK_KEYS = Rule(can_manage_sdk_keys, "SDK keys are managed by the project's admins.")
MANAGE_WEBHOOKS = Rule(can_manage_sdk_keys, "Webhooks are managed by the project's admins.")
MANAGE_SERVICE_TOKENS = Rule(can_manage_sdk_keys, "Service tokens are managed by the project's admins.")
CHANGE_APPROVAL_POLICIES = Rule(_holds("manage_approval_policy"),
                                "Approval policies are changed by the project's admins.")

# Audit and operations
BROWSE_AUDIT = Rule(lambda user: bool(audit_project_ids(user)) or sees_account_events(user),
                    "The audit trail is open to auditors and project admins.")
EXPORT_AUDIT = Rule(lambda user: bool(audit_project_ids(user, "export_audit")),
                    "Exports of the audit trail are open to auditors and project admins.")
VIEW_SYSTEM_STATUS = Rule(can_view_system_status, "System status is for site staff and project admins.")

# Change control (the object is a change request, a follow-up's project, or a flag)
PROPOSE_CHANGE = Rule(_proposes,
                      "Proposing changes needs the flag owner, editor or operator role in this project.")
APPROVE = Rule(lambda user, change_request: has_project_permission(user, change_request.project, "approve_change"),
               "Approving needs the approver role in this project.")
REJECT = Rule(APPROVE.test, "Rejecting needs the approver role in this project.")
COMMENT = Rule(lambda user, change_request: (_is_requester(user, change_request)
                                             or _takes_part(user, change_request.project)),
               "Commenting needs a role that takes part in changes (editor, approver or operator).")
APPLY = Rule(_carries, "Applying needs the flag owner or editor role (a requester who lost it cannot).")
SCHEDULE = Rule(_carries, "Scheduling needs the flag owner or editor role.")
EDIT_REQUEST = Rule(_is_requester, "Only the requester can edit a request.")
CANCEL_REQUEST = Rule(_is_requester, "Only the requester can cancel a request.")
FLIP_KILL_SWITCH = Rule(_holds("flip_killswitch"), "Flipping a kill switch needs the operator role in this project.")
START_INCIDENT = Rule(_holds("flip_killswitch"), "Incident mode needs the operator role in this project.")
LIFT_INCIDENT = Rule(_holds("flip_killswitch"), "Lifting incident mode needs the operator role in this project.")
ACKNOWLEDGE = Rule(_takes_part, "Acknowledging needs the editor, approver or operator role in this project.")

# Rollout plans (the object is a flag, or a plan)
PLAN_ROLLOUT = Rule(steers, "Planning a rollout needs the flag owner or editor role in this project.")
STEER_PLAN = Rule(lambda user, plan: steers(user, plan.flag),
                  "Starting, advancing, promoting, resuming or discarding a rollout plan needs the flag "
                  "owner or editor role in this project.")
STOP_PLAN = Rule(lambda user, plan: steers(user, plan.flag) or has_project_permission(user, plan.project,
                                                                                     "flip_killswitch"),
                 "Pausing or rolling back a rollout plan needs the operator, flag owner or editor role "
                 "in this project.")
INVESTIGATE_PLAN = Rule(lambda user, plan: _takes_part(user, plan.project),
                        "Investigating a rollout plan needs a role that takes part in changes (editor, "
                        "approver or operator).")

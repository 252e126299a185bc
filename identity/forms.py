from __future__ import annotations

from django import forms

from flags.constants import Role
from identity.models import GROUP_MAX_LENGTH


class GroupRoleRuleForm(forms.Form):
    group = forms.CharField(max_length=GROUP_MAX_LENGTH, label="Group",
                            help_text="Exactly as the identity provider sends it in the groups claim.")
    role = forms.ChoiceField(choices=Role.choices, label="Role in this project")


class RuleRowForm(GroupRoleRuleForm):
    """One rule's row on the sign-in page: its inputs sit in table cells, tied to the row's
    <form id="rule-<pk>"> by their `form` attribute and labelled for screen readers."""

    def __init__(self, *args: object, rule_id: int, **kwargs: object) -> None:
        super().__init__(*args, prefix=f"rule-{rule_id}", **kwargs)
        for name, label in (("group", "Group"), ("role", "Role")):
            self.fields[name].widget.attrs.update({"form": f"rule-{rule_id}", "aria-label": f"{label} of this rule"})

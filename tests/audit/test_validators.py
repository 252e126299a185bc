"""Free-text limits (audit.constants.TEXT_LIMITS, audit/validators.py): refused with the count,
never cut; code-built text shortened only with a visible ellipsis."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.constants import TEXT_LIMITS
from audit.validators import TextLimitValidator, check_text_limit, shortened


def test_check_text_limit__one_character_over__refused_on_the_field_with_the_count() -> None:
    with pytest.raises(ValidationError) as refused:
        check_text_limit("reason", "x" * 2_345)
    assert refused.value.message_dict == {"reason": ["Keep the reason to 2,000 characters at most (this one has 2,345)."]}


@pytest.mark.parametrize("text", ["", None, "x" * TEXT_LIMITS["reason"]])
def test_check_text_limit__empty_or_at_the_limit__accepted(text) -> None:
    check_text_limit("reason", text)


def test_check_text_limit__field_named_apart_from_its_limit__error_on_the_field_words_of_the_limit() -> None:
    with pytest.raises(ValidationError) as refused:
        check_text_limit("body", "c" * 5_001, limit="comment")
    assert refused.value.message_dict == {"body": ["Keep the comment to 5,000 characters at most (this one has 5,001)."]}
    with pytest.raises(ValidationError) as plan:
        check_text_limit("reason", "p" * 1_801, limit="plan_reason")
    assert plan.value.message_dict == {"reason": ["Keep the reason to 1,800 characters at most (this one has 1,801)."]}


def test_text_limit_validator__model_or_form_field__same_words_and_deconstructible() -> None:
    validator = TextLimitValidator("cleanup_rule")
    validator("r" * 2_000)
    with pytest.raises(ValidationError) as refused:
        validator("r" * 2_001)
    assert refused.value.messages == ["Keep the cleanup rule to 2,000 characters at most (this one has 2,001)."]
    assert validator.deconstruct() == ("audit.validators.TextLimitValidator", ("cleanup_rule",), {})
    assert validator == TextLimitValidator("cleanup_rule") != TextLimitValidator("description")
    with pytest.raises(ValueError):
        TextLimitValidator("poem")


def test_shortened__longer_than_the_length__cut_with_an_ellipsis_shorter_untouched() -> None:
    assert shortened("abcdef", 4) == "abc…"
    assert shortened("abcd", 4) == "abcd"


def test_text_limits__inputs_fit_in_what_the_audit_keeps() -> None:
    # The longest thing people give, plus the context code puts before a reason, fits a row.
    typed = max(limit for name, limit in TEXT_LIMITS.items() if name not in ("audit_reason", "summary"))
    assert typed + 200 <= TEXT_LIMITS["audit_reason"]
    assert TEXT_LIMITS["plan_reason"] + 200 <= TEXT_LIMITS["reason"]

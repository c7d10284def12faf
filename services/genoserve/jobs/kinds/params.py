"""Job params: one pydantic model per job kind, parsed from the strings a client sends.

A job's params travel and are stored as strings (the Job message's ``map<string, string>``);
``parse`` reads them into the kind's model, refusing what breaks a rule with INVALID_ARGUMENT
naming ``params[<name>]`` and the rule, and ``Params.as_strings`` writes the model back as the
normalized strings the job record keeps (every param, defaults filled in).

The rules, the same for every kind:

- unknown names are refused, listing the kind's params;
- booleans (``Flag``) are ``true``/``false`` or ``1``/``0``, in any case, stored as
  ``true``/``false``; anything else (``yes``, ``on``, "") is refused rather than read as false;
- counts are whole numbers (``shard_size`` at least 1); numbers are finite;
- ``model`` is a plain model name, ``version`` a version number.

Each field's docstring documents the param (``Params.describe`` lists them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from genoserve.core.errors import FieldViolation, InvalidArgument, quoted

P = TypeVar("P", bound="Params")

#: A model name, as model.yaml's ``name`` (genoserve.runtime.spec): a plain name, never a path.
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
TRUE, FALSE = ("true", "1"), ("false", "0")
_RULE = "genoserve_param"


def _broken(rule: str) -> PydanticCustomError:
    return PydanticCustomError(_RULE, "{rule}", {"rule": rule})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text not in (*TRUE, *FALSE):
        raise _broken(f"must be true or false, got {quoted(_text(value), 40)} (1 and 0 work too)")
    return text in TRUE


def at_least(minimum: int, unit: str = "") -> Callable[[Any], int]:
    """A whole number >= ``minimum`` (``unit`` named in the rule, e.g. "bp")."""

    def check(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = _text(value).strip()
            number = int(text) if re.fullmatch(r"[+-]?\d+", text) else minimum - 1
        if number < minimum:
            what = "a positive integer" if minimum == 1 and not unit else f"an integer >= {minimum} {unit}".rstrip()
            raise _broken(f"must be {what}, got {quoted(_text(value), 40)}")
        return number

    return check


def _integer(value: Any) -> int:
    text = _text(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise _broken(f"must be an integer, got {quoted(_text(value), 40)}")
    return int(text)


def _number(value: Any) -> float:
    try:
        number = float(_text(value).strip())
    except ValueError:
        raise _broken(f"must be a number, got {quoted(_text(value), 40)}") from None
    if not math.isfinite(number):
        raise _broken(f"must be finite, got {quoted(_text(value), 40)}")
    return number


def _optional_number(value: Any) -> float | None:
    return None if value is None or _text(value).strip() == "" else _number(value)


def _integers(value: Any) -> tuple[int, ...]:
    if isinstance(value, tuple | list):
        return tuple(_integer(v) for v in value)
    text = _text(value).strip()
    try:
        return tuple(_integer(part) for part in text.split(",")) if text else ()
    except PydanticCustomError:
        raise _broken(f"must be comma-separated integers, got {quoted(text, 40)}") from None


def choice(*values: str) -> Callable[[Any], str]:
    """One of ``values`` ("" among them: the param may be left empty)."""
    named = [v for v in values if v]
    spoken = ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else named[0]

    def check(value: Any) -> str:
        text = _text(value)
        if text not in values:
            raise _broken(f"must be {spoken}, got {quoted(text, 40)}")
        return text

    return check


def _model_name(value: Any) -> str:
    text = _text(value)
    if text and not MODEL_NAME.fullmatch(text):
        raise _broken(
            "must be a model name (lower-case letters, digits, '.', '_' and '-', e.g. deepbind-ctcf), "
            f"got {text[:80]!r}"
        )
    return text


def _version(value: Any) -> str:
    text = _text(value)
    if text and not text.isdigit():
        raise _broken(f"must be a version number, got {text[:40]!r}")
    return text


Flag = Annotated[bool, BeforeValidator(_flag)]
PositiveInt = Annotated[int, BeforeValidator(at_least(1))]
Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
OptionalNumber = Annotated[float | None, BeforeValidator(_optional_number)]
Integers = Annotated[tuple[int, ...], BeforeValidator(_integers)]
ModelName = Annotated[str, BeforeValidator(_model_name)]
Version = Annotated[str, BeforeValidator(_version)]


class Params(BaseModel):
    """Params every job kind takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    version: Version = ""
    """Model version to run (a number). Empty: the version the server serves, pinned when the job is
    submitted so that every shard runs the same one."""
    overwrite: Flag = False
    """Replace outputs that exist already (otherwise the submission is refused with ALREADY_EXISTS)."""

    def as_strings(self) -> dict[str, str]:
        """Every param as the string the job record keeps: booleans ``true``/``false``, lists
        comma-separated, an unset number ""."""
        return {name: _as_string(value) for name, value in self}

    @classmethod
    def defaults(cls) -> dict[str, str]:
        """Every param's default, as a string."""
        return cls().as_strings()

    @classmethod
    def flags(cls) -> frozenset[str]:
        """The boolean params."""
        return frozenset(name for name, field in cls.model_fields.items() if field.annotation is bool)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each param's documentation (its field docstring)."""
        return {name: (field.description or "").strip() for name, field in cls.model_fields.items()}


class ModelParams(Params):
    """Params of a kind that runs a named model."""

    model: ModelName = ""
    """The model to run (a name that ``genoserve models list`` shows)."""


def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return ",".join(_as_string(v) for v in value)
    return str(value)


def parse(model: type[P], kind: str, params: Mapping[str, str]) -> P:
    """``params`` as ``model``; INVALID_ARGUMENT naming each ``params[<name>]`` and the rule it
    breaks (unknown names listed with the kind's params)."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        known = sorted(model.model_fields)
        violations = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            if error["type"] == "extra_forbidden":
                rule = f"unknown parameter for {kind}; known: {', '.join(known)}"
            elif error["type"] == _RULE:
                rule = str((error.get("ctx") or {}).get("rule", error["msg"]))
            else:
                rule = error["msg"]
            violations.append(FieldViolation(f"params[{name[:80]}]", rule))
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(message, violations) from exc

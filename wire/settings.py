"""Settings every process shares: how to reach NATS, and the log level. Each process's
own ``Settings`` class (gateway/settings.py, services/settings.py) extends this one; these
fields keep their fixed names (``SB_NATS_*``, ``SB_LOG_LEVEL``) whatever its prefix.

Every settings class also refuses, at start, an environment variable under its own
prefix that names none of its settings: ``SB_GATEWAY_REQUEST_TIMOUT=5`` would otherwise
be ignored in silence and the gateway would run with the default.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

SHARED_PREFIXES = ("SB_NATS_", "SB_LOG_")


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable of field ``name`` of ``cls``."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def env_names(cls: type[BaseSettings]) -> set[str]:
    return {env_name(cls, name, field).upper() for name, field in cls.model_fields.items()}


def unknown_variables(
    cls: type[BaseSettings], environ: Mapping[str, str], skip: tuple[str, ...] = ()
) -> list[str]:
    """Variables of ``environ`` under ``cls``'s prefix (and the shared ``SB_NATS_``,
    ``SB_LOG_``) that name none of its fields, each with a guess of what was meant.
    ``skip``: prefixes of other settings classes nested in this one's."""
    known = env_names(cls)
    prefixes = (cls.model_config.get("env_prefix", "").upper(), *SHARED_PREFIXES)
    if not issubclass(cls, SharedSettings):  # the SB_NATS_* fields are not its own
        prefixes = prefixes[:1]
    problems = []
    for key in sorted(environ):
        name = key.upper()  # pydantic-settings reads them case-insensitively
        if not name.startswith(prefixes) or name.startswith(skip) or name in known:
            continue
        guess = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        problems.append(f"{key} is not a setting{hint}")
    return problems


class StrictSettings(BaseSettings):
    """Refuses unknown variables under its prefix (:func:`unknown_variables`)."""

    nested_prefixes: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _refuse_unknown_variables(self) -> StrictSettings:
        problems = unknown_variables(type(self), os.environ, self.nested_prefixes)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SharedSettings(StrictSettings):
    nats_url: str = Field(
        "nats://127.0.0.1:4222", validation_alias="SB_NATS_URL", description="NATS server"
    )
    nats_user: str | None = Field(
        None, validation_alias="SB_NATS_USER", description="NATS user (infra/nats/auth.conf)"
    )
    nats_password: str | None = Field(
        None, validation_alias="SB_NATS_PASSWORD", description="that user's password"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="SB_LOG_LEVEL", description="JSON log lines from this level up"
    )

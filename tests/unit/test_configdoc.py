"""docs/configuration.md is generated from the settings classes (switchboard/configdoc.py):
it must be current, cover every settings class, and describe every variable."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import gateway
import services
import switchboard
import wire
from switchboard import configdoc


def import_everything() -> None:
    """Import every module of the four packages (not ``__main__``: it starts a process),
    so that a settings class anywhere in them is found."""
    for package in (gateway, services, switchboard, wire):
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def test_committed_configuration_doc_is_current() -> None:
    assert configdoc.OUT.read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_every_settings_class_is_documented() -> None:
    import_everything()
    listed = {cls for _, _, classes in configdoc.PROCESSES for cls in classes}
    missing = {c.__qualname__ for c in configdoc.settings_classes()} - {
        c.__qualname__ for c in listed
    }
    # base classes whose fields every subclass lists
    assert missing <= {"StrictSettings", "SharedSettings", "ServiceSettings"}, missing


@pytest.mark.parametrize(
    "cls", sorted(configdoc.settings_classes(), key=lambda c: c.__qualname__), ids=str
)
def test_every_variable_has_a_meaning_and_a_unique_name(cls) -> None:
    names = [configdoc.env_name(cls, n, f) for n, f in cls.model_fields.items()]
    assert len(names) == len(set(names))
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"
    for name in names:
        assert name.startswith("SB_") and name.isupper()


def test_doc_names_every_variable_with_its_default() -> None:
    text = configdoc.render()
    rows = [line for line in text.splitlines() if line.startswith("| `SB_")]
    envs = {row.split("`")[1] for row in rows}
    assert "SB_CODEC_CONCURRENCY" in envs and "SB_NATS_URL" in envs
    assert "| `SB_CODEC_QUEUE_BYTES` | `67108864 (64 MiB)` | ≥ 0 |" in text
    assert "| `SB_LOG_LEVEL` | `info` | `debug`, `info`, `warning`, `error` |" in text

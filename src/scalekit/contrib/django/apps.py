"""The Django app config: add ``"scalekit.contrib.django"`` to ``INSTALLED_APPS``
for the ``SCALEKIT`` settings checks (``scalekit.E001``...)."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

__all__ = ["ScalekitConfig"]


class ScalekitConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Registers the ``SCALEKIT`` system checks."""

    name = "scalekit.contrib.django"
    label = "scalekit"
    verbose_name = "scalekit"

    def ready(self) -> None:
        from scalekit.contrib.django._settings import check_settings

        checks.register(check_settings, "scalekit")

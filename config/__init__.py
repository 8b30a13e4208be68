"""Configuration: the one settings object and the default files beside it."""

from config.settings import Settings, SettingsError, parse_size

__all__ = ["Settings", "SettingsError", "parse_size"]

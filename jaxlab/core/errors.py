"""Errors for user mistakes: the CLI prints their message, never a traceback."""

from __future__ import annotations


class UserError(Exception):
  """A mistake in what the user asked for; the message says what was expected and what came."""


class ConfigError(UserError, ValueError):
  """A bad configuration, detected before anything is compiled or trained."""

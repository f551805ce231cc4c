"""The errors a user can cause and fix. Each says what is wrong in its message and which exit code
it ends a command with; `cli.py` turns them into one line, in one place, for every command.

Light on purpose (no third-party import): the command line imports it before anything slow.
"""

from __future__ import annotations

USAGE_EXIT_CODE = 2  # click's, for a bad option: a setting the user gave is invalid
FAILURE_EXIT_CODE = 1


class UserError(Exception):
    """Something the user can fix (missing data, an unknown run, a damaged state folder)."""

    exit_code = FAILURE_EXIT_CODE


class SettingError(UserError):
    """A setting the user gave (option, recipe, search file, environment) is invalid."""

    exit_code = USAGE_EXIT_CODE

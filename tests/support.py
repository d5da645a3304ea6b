"""Plain helper functions shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def errors_of(raw: dict) -> list[str]:
    """The error lines of a study file that must not validate (fails when it validates)."""
    from tunetrack.search.study_file import StudyFileError, parse_study

    with pytest.raises(StudyFileError) as info:
        parse_study(raw, "s.yaml")
    return info.value.errors

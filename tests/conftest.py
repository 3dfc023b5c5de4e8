"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labctl.config import Ports
from labctl.native.lab import NativeLab


@pytest.fixture(scope="session")
def native_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeLab]:
    """The whole native lab, started by the same code as `make up`, once per session.

    Every port is 0: each process binds a port the OS picks and the runner reads it back
    (psutil), so there is no "pick a free port, close it, hope" race. Use ``lab.urls[name]``
    (or ``lab.port(name)``) for addresses and ``lab.alerts_file`` for received alerts. Light load
    (5 users). Mark tests that use it ``@pytest.mark.integration``.
    """
    lab = NativeLab(tmp_path_factory.mktemp("native-lab"), Ports.any_free(), users=5, spawn_rate=5)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        lab.close()

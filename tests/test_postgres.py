"""PostgreSQL by URL: the same checkout against a real, throwaway PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import fast_settings, free_port, in_process

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        pytest.fail(f"{name} not found: apt-get install postgresql (make system-deps does it)")
    return found


@pytest.fixture(scope="module")
def postgres():
    """initdb + pg_ctl in a temp dir, trust auth on 127.0.0.1, a free port; stopped after."""
    # Not under pytest's tmp dir: that is private to root, and PostgreSQL runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="triagelab-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "lab"],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "-l",
            str(root / "pg.log"),
            "start",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # no pipes: the server would inherit and hold them
    try:
        subprocess.run(
            [
                *as_user,
                _pg_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "lab",
                "shop",
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        yield f"postgresql+asyncpg://lab@127.0.0.1:{port}/shop"
    finally:
        subprocess.run(
            [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


async def test_checkout_on_postgresql(postgres, tmp_path: Path):
    import asyncpg

    settings = fast_settings(tmp_path, database_url=postgres)
    async with in_process(settings) as c:
        gw = c["gateway"]
        token = (
            await gw.post("/api/login", json={"username": "alice", "password": "wonderland"})
        ).json()["access_token"]
        r = await gw.post(
            "/api/checkout",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "items": [{"product_id": "sku-scale", "quantity": 2}],
                "card_number": "4242424242424242",
            },
        )
        assert r.status_code == 201, r.text
        order_id = r.json()["order_id"]
        # The SQLite files were not used: the rows are in PostgreSQL.
        assert not (tmp_path / "order.db").exists()
    conn = await asyncpg.connect(postgres.replace("postgresql+asyncpg", "postgresql"))
    try:
        assert await conn.fetchval("SELECT status FROM orders WHERE id=$1", order_id) == "paid"
        assert await conn.fetchval("SELECT count(*) FROM charges WHERE order_id=$1", order_id) == 1
    finally:
        await conn.close()

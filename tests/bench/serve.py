"""Serve an app factory with uvicorn on an inherited, already listening TCP socket.

`uvicorn --fd N` wraps the descriptor as an AF_UNIX socket (socket.fromfd(fd, AF_UNIX, ...)),
so uvloop treats the connection as a Unix stream and never sets TCP_NODELAY: each response
(headers and body are two writes) then waits on the client's delayed ACK, ~40 ms a request on
loopback, and throughput is capped near connections / 40 ms whatever the app. Here the socket
is rebuilt with its real family (socket.socket(fileno=N)), and uvicorn runs with the same
settings as its CLI flags would give: --factory --no-access-log --loop uvloop --http httptools.

    python -m tests.bench.serve FD module:factory
"""

from __future__ import annotations

import socket
import sys

import uvicorn


def main() -> None:
    fd, app = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(fileno=fd)  # family and type read from the descriptor: AF_INET
    config = uvicorn.Config(
        app,
        factory=True,
        access_log=False,
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

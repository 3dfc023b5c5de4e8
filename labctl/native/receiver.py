"""The alert receiver: Alertmanager's webhook target in the native lab.

Every notification is appended as one JSON line to ``alerts.jsonl`` with the time it arrived,
so a person (``GET /alerts``) and the drills (``read_alerts``) can see what paged and when.
Standard library only: it must start in milliseconds and weigh a few megabytes.

Routes: ``POST /hook/<channel>`` (``page``, ``ticket``, ...), ``GET /alerts[?channel=&since=]``,
``GET /healthz``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 10 * 1024 * 1024
READ_TIMEOUT = 10.0  # seconds a client may take to send what its Content-Length announced


def notification_problem(notification: Any) -> str | None:
    """Why a webhook body is not an Alertmanager notification we can record (None: it is)."""
    if not isinstance(notification, dict):
        return "body is not a JSON object"
    alerts = notification.get("alerts")
    if alerts is None:
        return None
    if not isinstance(alerts, list):
        return "alerts must be a list"
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            return f"alerts[{i}] must be an object"
        labels = alert.get("labels", {})
        if not isinstance(labels, dict):
            return f"alerts[{i}].labels must be an object"
        if not isinstance(labels.get("alertname", ""), str):
            return f"alerts[{i}].labels.alertname must be a string"
    return None


def _now() -> tuple[str, float]:
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z"), now


def _log(event: str, **fields: Any) -> None:
    stamp, _ = _now()
    line = {"timestamp": stamp, "level": "info", "service": "receiver", "event": event, **fields}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


class AlertStore:
    """Append-only JSON-lines file; one lock because the server is threaded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, channel: str, notification: dict[str, Any]) -> dict[str, Any]:
        stamp, unix = _now()
        alerts = notification.get("alerts") or []
        record = {
            "received_at": stamp,
            "received_unix": unix,
            "channel": channel,
            "status": notification.get("status"),
            "alertnames": sorted(
                {a.get("labels", {}).get("alertname", "") for a in alerts if isinstance(a, dict)}
            ),
            "notification": notification,
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
        return record


def read_alerts(
    path: Path, channel: str | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """Recorded notifications, oldest first; a half-written last line is skipped, not fatal."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if channel and record.get("channel") != channel:
                continue
            if since is not None and record.get("received_unix", 0) < since:
                continue
            records.append(record)
    return records


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT  # a body shorter than its Content-Length does not hold a thread

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "hook" or not parts[1]:
            self._reply(404, {"error": "POST /hook/<channel>"})
            return
        raw_length = (self.headers.get("Content-Length") or "").strip()
        if not raw_length:
            self._reply(400, {"error": "a JSON body with a Content-Length is required"})
            return
        if not raw_length.isascii() or not raw_length.isdigit():
            self.close_connection = True  # the body's end is unknown: do not read on
            self._reply(400, {"error": f"Content-Length is not a number: {raw_length[:40]!r}"})
            return
        length = int(raw_length)
        if length <= 0 or length > MAX_BODY:
            self.close_connection = True
            self._reply(400, {"error": f"Content-Length must be 1..{MAX_BODY} bytes"})
            return
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raw = b""
        if len(raw) < length:
            self.close_connection = True
            self._reply(400, {"error": "the body is shorter than its Content-Length"})
            return
        try:
            notification = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            self._reply(400, {"error": "body is not JSON"})
            return
        problem = notification_problem(notification)
        if problem is not None:
            self._reply(400, {"error": problem})
            return
        record = self.server.store.append(parts[1], notification)
        _log(
            "alert notification received",
            channel=parts[1],
            status=record["status"],
            alertnames=record["alertnames"],
        )
        self._reply(200, {"ok": True})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._reply(200, {"status": "ok"})
            return
        if url.path in ("/alerts", "/"):
            query = parse_qs(url.query)
            channel = query.get("channel", [None])[0]
            since_raw = query.get("since", [None])[0]
            try:
                since = float(since_raw) if since_raw else None
            except ValueError:
                self._reply(400, {"error": "since must be a unix time in seconds"})
                return
            self._reply(200, read_alerts(self.server.store.path, channel, since))
            return
        self._reply(404, {"error": "not found"})

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines stay out of the log; notifications are logged in do_POST."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: AlertStore) -> None:
        self.store = store
        super().__init__(address, _Handler)


def serve(host: str, port: int, path: Path) -> None:
    server = _Server((host, port), AlertStore(path))

    def _stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _log("receiver listening", host=host, port=server.server_port, file=str(path))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        _log("receiver stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--file", type=Path, default=Path("var/lab/alerts.jsonl"))
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.file)


if __name__ == "__main__":
    main()

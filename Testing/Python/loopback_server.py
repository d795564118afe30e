"""A loopback HTTP server for download tests: serves a folder on 127.0.0.1, honours Range requests
(resumed downloads) and records the start of each one. Nothing leaves this machine."""

from __future__ import annotations

import http.server
import io
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    ranges: list[int] = []  # start offsets of the Range requests received

    def send_head(self):
        range_header = self.headers.get("Range")
        try:
            data = Path(self.translate_path(self.path)).read_bytes()
        except OSError:
            self.send_error(404)
            return None
        if range_header:
            start = int(range_header.split("=")[1].split("-")[0])
            RangeHandler.ranges.append(start)
            self.send_response(206)
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)

    def log_message(self, *args):
        pass


@contextmanager
def serving(root: Path):
    """``with serving(folder) as url:`` files of ``folder`` under ``url``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()

"""Which HTTP server should carry the inference server? Measure, then choose.

`python bench/inference/servers.py` serves the same trivial JSON handler (parse
the body with orjson, sum a list, answer JSON) with each candidate, one
process each, and drives it with wrk (1 thread, 16 connections, 5 s). The
per-request overhead of the server is what separates them: the real `run()`
comes on top. Candidates are installed into their own virtualenv under
~/.cache/sluice-bench/candidates so the project's lock stays small.
The table it printed is in bench/README.md ("## inference").
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CACHE = Path(os.environ.get("SLUICE_BENCH_CACHE", Path.home() / ".cache" / "sluice-bench"))
VENV = CACHE / "candidates"
PACKAGES = ["granian", "aiohttp", "uvicorn[standard]", "httptools", "uvloop", "orjson"]
UV = shutil.which("uv") or "uv"
WRK = shutil.which("wrk") or "wrk"
BODY = '{"data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}'

COMMON = """
import sys, orjson
PORT = int(sys.argv[1])
def handle(body):
    return orjson.dumps({"sum": sum(orjson.loads(body)["data"])})
"""

CANDIDATES = {
    # A hand-written asyncio Protocol around httptools' parser on uvloop: no framework at all.
    "httptools+uvloop (raw protocol)": """
import asyncio, httptools, uvloop
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.p = httptools.HttpRequestParser(self); self.body = []
    def data_received(self, d):
        self.p.feed_data(d)
    def on_body(self, b):
        self.body.append(b)
    def on_message_complete(self):
        out = handle(b"".join(self.body)); self.body = []
        self.t.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: "
                     + str(len(out)).encode() + b"\\r\\n\\r\\n" + out)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", PORT, backlog=1024)
    await srv.serve_forever()
uvloop.run(main())
""",
    "uvicorn (httptools, uvloop) + raw ASGI": """
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive(); body += m.get("body", b"")
        if not m.get("more_body"):
            break
    out = handle(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
uvicorn.run(app, host="127.0.0.1", port=PORT, http="httptools", loop="uvloop",
            log_level="warning", access_log=False)
""",
    "granian RSGI (1 worker, 1 thread)": """
import os
from granian import Granian
from granian.constants import Interfaces, Loops
os.environ["GRANIAN_APP"] = "x"
class App:
    async def __rsgi__(self, scope, proto):
        out = handle(await proto())
        proto.response_bytes(200, [("content-type", "application/json")], out)
import builtins; builtins.APP = App()
Granian("builtins:APP", address="127.0.0.1", port=PORT, interface=Interfaces.RSGI,
        workers=1, runtime_threads=1, loop=Loops.uvloop, log_enabled=False).serve()
""",
    "aiohttp low-level server (uvloop)": """
import asyncio, uvloop
from aiohttp import web
async def h(request):
    return web.Response(body=handle(await request.read()), content_type="application/json")
async def main():
    server = web.Server(h, access_log=None)
    srv = await asyncio.get_running_loop().create_server(server, "127.0.0.1", PORT)
    await srv.serve_forever()
uvloop.run(main())
""",
}


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([UV, "venv", "-q", "-p", "3.11", str(VENV)], check=True)
        env = {**os.environ, "VIRTUAL_ENV": str(VENV)}
        subprocess.run([UV, "pip", "install", "-q", *PACKAGES], check=True, env=env)
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk_post(url: str, body: str, *, seconds: int = 5, connections: int = 16) -> float:
    script = CACHE / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out or "errors:" in out:
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(match.group(1))


def main() -> None:
    python = ensure_venv()
    folder = CACHE / "candidate-apps"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{'server':42} {'RPS':>9}")
    for name, code in CANDIDATES.items():
        slug = re.sub(r"\W+", "_", name)
        app = folder / f"{slug}.py"
        app.write_text(COMMON + textwrap.dedent(code))
        port = free_port()
        proc = subprocess.Popen([str(python), str(app), str(port)])
        try:
            wait_listening(port)
            wrk_post(f"http://127.0.0.1:{port}/", BODY, seconds=1)  # warm up
            rps = wrk_post(f"http://127.0.0.1:{port}/", BODY)
            print(f"{name:42} {rps:9.0f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())

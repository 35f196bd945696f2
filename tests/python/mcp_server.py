"""An MCP server for the gateway's tests, built with the official SDK's
`MCPServer` (which answers both protocol eras).

    mcp_server.py NAME --port N [--json] [--stateless]   Streamable HTTP
    mcp_server.py NAME --stdio                            stdio
    mcp_server.py NAME --port N --legacy-only             refuses 2026-07-28
                                                          (a handshake-era server)

Tools: `echo` (read-only), `slow` (reports progress), `sleepy` (records
its start and its cancellation in $MCP_TEST_EVENTS), `update_record`
(destructive), `whoami` (its name and pid). A prompt `greet` and a
resource `resource://hello`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

EVENTS = os.environ.get("MCP_TEST_EVENTS")


def event(text: str) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(f"{time.time():.3f} {text}\n")


def build(name: str) -> MCPServer:
    mcp = MCPServer(name, version="1.0.0")

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        """Echoes the text back."""
        return text

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def slow(steps: int, ctx: Context, delay: float = 0.05) -> str:
        """Counts to `steps`, reporting progress after each."""
        for i in range(steps):
            await anyio.sleep(delay)
            await ctx.report_progress(i + 1, steps, f"step {i + 1}")
        return f"done {steps}"

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def sleepy(tag: str, seconds: float = 30.0) -> str:
        """Sleeps, noting its start and its cancellation."""
        event(f"{name} start {tag}")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            event(f"{name} cancelled {tag}")
            raise
        event(f"{name} finished {tag}")
        return "slept"

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    def update_record(record: str, value: str) -> str:
        """Changes a record."""
        return f"{record}={value}"

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    def contact() -> str:
        """Who to write to (an email address, for guardrails on results)."""
        return "write to ops.team@example.com today"

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    def card_on_file() -> str:
        """The card on file (a card number, for guardrails on results)."""
        return "the card is 4111 1111 1111 1111"

    @mcp.tool()
    def whoami() -> str:
        """The server's name and process id."""
        return f"{name} {os.getpid()}"

    @mcp.prompt()
    def greet(who: str) -> str:
        """Greets someone."""
        return f"Hello, {who}!"

    @mcp.resource("resource://hello", mime_type="text/plain")
    def hello() -> str:
        return f"hello from {name}"

    return mcp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--port", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--stdio", action="store_true")
    p.add_argument("--legacy-only", action="store_true")
    a = p.parse_args()
    mcp = build(a.name)
    if a.stdio:
        mcp.run()
        sys.exit(0)
    if a.legacy_only:
        import uvicorn

        app = mcp.streamable_http_app(json_response=a.json, stateless_http=a.stateless)
        uvicorn.run(handshake_only(app), host="127.0.0.1", port=a.port, log_level="warning")
        sys.exit(0)
    mcp.run("streamable-http", host="127.0.0.1", port=a.port, json_response=a.json, stateless_http=a.stateless)


def handshake_only(app):
    """Answers 2026-07-28 requests as a server of the handshake era does
    (400, no session): clients and gateways then fall back to initialize."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"mcp-protocol-version") == b"2026-07-28":
                body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: Missing session ID"}}'
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return wrapped


if __name__ == "__main__":
    main()

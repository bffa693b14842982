"""``flower-superlink`` whose Control and Runtime APIs answer only this machine.

Flower 1.42 serves its Fleet API (SuperNodes), Control API (``flwr run``,
``flwr ls``, ``flwr supernode register``...) and Runtime API (the ServerApp's
link) on one HTTP port, and without Flower's enterprise OIDC plugin the Control
API authenticates nobody: whoever reaches the fleet port could submit a run,
that is, run their own code in the ServerApp and on every SuperNode. This
launcher runs Flower's own ``flower-superlink`` with every argument unchanged
plus one ASGI middleware, :class:`LocalControlOnly`: a request for
``/v1/control/...`` or ``/v1/runtime/...`` from any address but the loopback
one gets ``403`` with a one-line reason; the Fleet API stays open to the
network (with TLS and ``--enable-supernode-auth``)::

    python scripts/superlink.py --host 0.0.0.0 --port 9093 --ssl-ca-certfile ca.crt \\
        --ssl-certfile server.crt --ssl-keyfile server.key --enable-supernode-auth

Submit runs on the server machine itself (or through ``ssh -L 9093:127.0.0.1:9093 server``).
The peer address is the TCP peer's: do not put a reverse proxy on the same machine in front of it.
"""

from __future__ import annotations

import ipaddress
import sys

GUARDED_PREFIXES = ("/v1/control", "/v1/runtime")
REASON = (b"This SuperLink accepts Control and Runtime API requests from its own machine only "
          b"(run flwr on the server, or tunnel: ssh -L PORT:127.0.0.1:PORT server).\n")


def is_loopback(client: tuple[str, int] | None) -> bool:
    """Whether an ASGI ``client`` (host, port) is this machine's loopback address."""
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0].split("%")[0]).is_loopback
    except ValueError:
        return False


class LocalControlOnly:
    """ASGI middleware: ``403`` for Control/Runtime API requests that do not come from the loopback address."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        guarded = any(path == prefix or path.startswith(prefix + "/") for prefix in GUARDED_PREFIXES)
        if scope.get("type") == "http" and guarded and not is_loopback(scope.get("client")):
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": REASON})
            return
        await self.app(scope, receive, send)


def guard(create_app):
    """``create_app`` whose apps put :class:`LocalControlOnly` in front of everything."""

    def create_guarded_app(*args, **kwargs):
        app = create_app(*args, **kwargs)
        app.add_middleware(LocalControlOnly)  # outermost: runs before Flower's own middleware
        return app

    return create_guarded_app


def main() -> None:
    from parent_watch import watch_parent  # scripts/: this script's own folder is on sys.path
    from stack_dump import dump_stacks_on_signal

    watch_parent()  # end with the dashboard or CLI that started it, even if it is killed outright
    dump_stacks_on_signal()  # kill -USR1: where a stuck process waits, into its log
    from flwr.superlink import main as superlink_main
    from flwr.superlink.cli.flower_superlink import flower_superlink

    superlink_main.create_app = guard(superlink_main.create_app)  # flower_superlink imports it at call time
    sys.argv = ["flower-superlink", *sys.argv[1:]]
    flower_superlink()


if __name__ == "__main__":
    main()

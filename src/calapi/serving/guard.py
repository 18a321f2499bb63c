"""What every request must pass before it is routed: a known Host and, for a POST, a JSON body
of bounded size.

A web page can make a browser POST to any address without asking first (no CORS preflight)
only with a text/plain, form or multipart body, or none; requiring ``application/json``
turns every such request into a 415. A page that rebinds its own DNS name to this API's
address (DNS rebinding) still sends that name as Host, which the allow-list refuses. IP
addresses are always allowed: Prometheus, probes and replicas reach the API by address, and a
page cannot make a browser send an IP address as Host for a name it controls.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final

from starlette.types import Scope

from calapi.serving.handlers import Answer, too_large
from calapi.serving.responses import JSON_MEDIA_TYPE, echo, problem_bytes

ANY_HOST: Final = "*"
JSON_TYPE: Final = JSON_MEDIA_TYPE.encode()
# Allowed Host values are remembered so the common case is one set lookup; bounded, since
# IP-address Hosts are allowed and come in any number.
_REMEMBERED_HOSTS: Final = 1024
_PORT_DIGITS: Final = 5


class RequestGuard:
    """Refuses a request with an unknown Host (400), or a POST to one of ``body_limits``'
    paths not declared as JSON (415) or declaring more bytes than the path's limit (413).

    ``body_limits`` maps each POST route to its limit and the advice a 413 gives; a POST
    elsewhere is left to the router (404, or 405 where the path takes no POST).
    """

    def __init__(self, allowed_hosts: str, body_limits: Mapping[str, tuple[int, str]]) -> None:
        names = {name.strip().lower().rstrip(".") for name in allowed_hosts.split(",")}
        self._any_host = ANY_HOST in names
        self._names = frozenset(names - {"", ANY_HOST})
        self._limits = dict(body_limits)
        self._allowed: set[bytes] = set()

    def refusal(self, scope: Scope, path: str) -> Answer | None:
        """The answer refusing this request, or None to let it through."""
        host = content_type = length = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        if host is not None and host not in self._allowed and not self._allow(host):
            return 400, problem_bytes(
                f"Host {echo(host.decode('latin-1'))} is not one this API answers; if it is "
                "yours, add it to CALOPS_ALLOWED_HOSTS (comma-separated names)."
            )
        if scope["method"] != "POST" or path not in self._limits:
            return None
        if content_type is None or not _is_json(content_type):
            return 415, problem_bytes(_not_json(content_type))
        limit, advice = self._limits[path]
        if length is not None and length.isdigit() and int(length) > limit:
            return 413, problem_bytes(too_large(limit, advice))
        return None

    def _allow(self, host: bytes) -> bool:
        allowed = self._any_host or host_allowed(host.decode("latin-1"), self._names)
        if allowed and len(self._allowed) < _REMEMBERED_HOSTS:
            self._allowed.add(host)
        return allowed


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a Host value (a name or an IP address, with an optional port) is allowed."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        port_ok = rest == "" or (rest[0] == ":" and _port(rest[1:]))
        return bool(bracket) and port_ok and _is_address(address, ipaddress.IPv6Address)
    name, colon, port = host.partition(":")
    if colon and not _port(port):
        return False
    name = name.lower().rstrip(".")
    return name in names or _is_address(name, ipaddress.IPv4Address)


def _port(text: str) -> bool:
    return 0 < len(text) <= _PORT_DIGITS and text.isascii() and text.isdigit()


def _is_address(text: str, kind: Any) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _is_json(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() == JSON_TYPE


def _not_json(content_type: bytes | None) -> str:
    sent = "none" if content_type is None else echo(content_type.decode("latin-1"))
    return f"Send the body as JSON with Content-Type: application/json (this request sent {sent})."

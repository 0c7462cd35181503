"""Plan 9 dial strings for the server and the client: ``tcp!HOST!PORT`` and ``unix!/path``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_PORT", "Address", "parse_address"]

DEFAULT_PORT = 5640
DEFAULT_ADDRESS = f"tcp!127.0.0.1!{DEFAULT_PORT}"


@dataclass(frozen=True)
class Address:
    """Where to listen or dial: ``network`` is ``tcp`` (host, port) or ``unix`` (path)."""

    network: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.network == "unix":
            return f"unix!{self.path}"
        return f"tcp!{self.host}!{self.port}"


def parse_address(text: str) -> Address:
    """Parse a dial string; ``tcp!*!PORT`` means every interface, a bare ``HOST:PORT`` is TCP too."""
    if not isinstance(text, str) or not text:
        raise ValueError("an address is a non-empty string such as tcp!127.0.0.1!5640 or unix!/path")
    if text.startswith("unix!"):
        path = text[len("unix!") :]
        if not path:
            raise ValueError(f"address {text!r} names no socket path")
        return Address("unix", path=path)
    parts = text.split("!")
    if len(parts) == 3 and parts[0] == "tcp":
        host, port_text = parts[1], parts[2]
    elif len(parts) == 1 and ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]")
    else:
        raise ValueError(f"address {text!r} is neither tcp!HOST!PORT nor unix!/path")
    if not host:
        raise ValueError(f"address {text!r} names no host")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"address {text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {text!r}: the port must be in 0..65535")
    return Address("tcp", host="0.0.0.0" if host == "*" else host, port=port)

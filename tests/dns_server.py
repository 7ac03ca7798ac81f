"""A tiny DNS server a test controls, on 127.0.0.1 (UDP): it answers A queries for the names
in `records` (name -> list of IPv4 addresses), which the test may change at any moment (a
container restarted onto a new address, a name gone while it is down); any other name, or a
name mapped to nothing, is NXDOMAIN; every other query type of a known name is an empty
answer. Enough for nginx's `resolver` (which asks for A records only with `ipv6=off`).

The wire format is RFC 1035's: a 12-byte header, the question echoed, then one answer record
per address, each naming the question through a compression pointer (0xC00C)."""

from __future__ import annotations

import socket
import struct
import threading

_A, _IN = 1, 1


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, end of the question section, query type) of a query."""
    labels, at = [], 12
    while packet[at]:
        length = packet[at]
        labels.append(packet[at + 1:at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[at + 1:at + 5])
    return ".".join(labels).lower(), at + 5, qtype


class DNSServer:
    """Listens on a free 127.0.0.1 UDP port (`port`, `address` as nginx's resolver takes it)."""

    def __init__(self, records: dict[str, list[str]], ttl: int = 1) -> None:
        self.records = {name.lower(): list(addresses) for name, addresses in records.items()}
        self.ttl = ttl
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)
        self._thread.start()

    def set(self, name: str, addresses: list[str]) -> None:
        """From now on `name` resolves to `addresses` (none: NXDOMAIN)."""
        self.records[name.lower()] = list(addresses)

    def answer(self, packet: bytes) -> bytes:
        (ident,) = struct.unpack("!H", packet[:2])
        name, end, qtype = _question(packet)
        addresses = self.records.get(name) or []
        rcode = 0 if addresses else 3  # NXDOMAIN
        answers = [a for a in addresses if qtype == _A]
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(answers), 0, 0)
        body = b"".join(struct.pack("!HHHIH", 0xC00C, _A, _IN, self.ttl, 4)
                        + socket.inet_aton(address) for address in answers)
        return header + packet[12:end] + body

    def _serve(self) -> None:
        while True:
            try:
                packet, client = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            try:
                reply = self.answer(packet)
            except (IndexError, struct.error, UnicodeError):
                continue  # not a query we understand: no answer, as a lost packet
            self.queries += 1
            self.sock.sendto(reply, client)

    def stop(self) -> None:
        self.sock.close()

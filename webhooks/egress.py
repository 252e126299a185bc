"""Where a webhook may send, and the one connection each attempt makes.

A webhook URL is chosen by a project admin, and the console's own network is behind it: cloud
metadata at 169.254.169.254, the console on 127.0.0.1, databases on 10.x, carrier-grade NAT on
100.64/10. So a webhook reaches globally routable addresses only, unless the operator lists a
private network in WEBHOOK_ALLOWED_NETWORKS (on-premise receivers):

- The host is resolved **once** per attempt, and **every** address returned is checked. The
  connection then goes to those checked addresses, never to the answer of a second lookup: a
  name that answers a public address to the check and 127.0.0.1 to the connection (DNS
  rebinding) gets nowhere. Host, SNI and the certificate check still use the name.
- An address is judged by where a connection to it ends up: the IPv4 address inside an
  IPv4-mapped (`::ffff:127.0.0.1`) or NAT64 (`64:ff9b::/96`) address, and the IPv4 router
  inside a 6to4 or Teredo address as well.
- Redirects are not followed, and nothing of the answer is kept but its status code: the
  delivery log must not become a way to read what an address answers.
- A refusal says only that the address is not allowed, never what a name resolved to.
- Proxies from the environment (HTTP_PROXY…) are not used: a proxy would resolve the name
  itself, after the check.

URLs are checked when they are configured (`validate_destination`) and again at every attempt
(`post`), because what a name resolves to can change in between.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_ALLOWED = "This address is not allowed: webhooks go to public internet addresses only."
UNRESOLVED = "Could not connect: the host name did not resolve."
DEFAULT_PORTS = {"http": 80, "https": 443}
# Addresses in the NAT64 well-known prefix reach the IPv4 address in their last 32 bits.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationError(Exception):
    """The attempt cannot start; the message is fit for the delivery log."""


class DestinationNotAllowed(DestinationError):
    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


class DestinationUnresolved(DestinationError):
    def __init__(self) -> None:
        super().__init__(UNRESOLVED)


# --- which addresses ------------------------------------------------------------------------


def allowed_networks() -> tuple[IPNetwork, ...]:
    """The private networks the operator lets webhooks reach (WEBHOOK_ALLOWED_NETWORKS)."""
    configured = settings.WEBHOOK_ALLOWED_NETWORKS
    if isinstance(configured, str):
        configured = configured.split(",")
    return parse_networks(tuple(entry.strip() for entry in configured if entry.strip()))


@functools.lru_cache(maxsize=16)
def parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError as exc:
        raise ImproperlyConfigured(f"WEBHOOK_ALLOWED_NETWORKS: {exc}") from exc


def reached_address(address: IPAddress) -> IPAddress:
    """Where a connection to `address` ends up: IPv4-mapped and NAT64 addresses reach IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64_PREFIX:
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address


def _is_public(address: IPAddress) -> bool:
    # is_global alone lets multicast and IPv6 site-local through (Python 3.11), and its lists
    # have changed between patch releases: every category is named.
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local))


def address_allowed(address: IPAddress, networks: Iterable[IPNetwork] = ()) -> bool:
    """Whether a webhook may connect to `address`: a globally routable one, or one inside
    `networks` (the allow-list). Unspecified and multicast addresses never are."""
    target = reached_address(address)
    if target.is_unspecified or target.is_multicast:
        return False  # 0.0.0.0 connects to this machine; multicast is nobody's receiver
    if any(target in network for network in networks):
        return True
    embedded: list[ipaddress.IPv4Address] = []
    if isinstance(target, ipaddress.IPv6Address):
        if target.sixtofour is not None:
            embedded.append(target.sixtofour)
        if target.teredo is not None:
            embedded.extend(target.teredo)
    return _is_public(target) and all(_is_public(inner) for inner in embedded)


# --- resolving once -------------------------------------------------------------------------

SocketAddress = tuple[Any, ...]


@dataclass(frozen=True)
class Destination:
    """A webhook URL resolved once, with the addresses that were checked: the only ones the
    connection may use."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    addresses: tuple[tuple[socket.AddressFamily, socket.SocketKind, int, SocketAddress], ...]


def resolve(url: str) -> Destination:
    """Resolve the URL's host once and check every address it has.

    Raises DestinationNotAllowed when any address is not allowed (a name with one private
    address among public ones is refused too), DestinationUnresolved when there is none, and
    DestinationError when the URL has no usable host or port.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except (KeyError, ValueError):
        raise DestinationError("The URL's scheme or port is not valid.") from None
    if not host:
        raise DestinationError("The URL has no host.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        raise DestinationUnresolved() from None
    networks = allowed_networks()
    addresses = []
    for family, kind, proto, _canonical_name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise DestinationNotAllowed()
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address_allowed(address, networks):
            # The operator's log may name the address; the delivery log and the form never do.
            logger.warning("Webhook host %r resolved to %s, which webhooks may not reach; refused.", host, address)
            raise DestinationNotAllowed()
        addresses.append((family, kind, proto, sockaddr))
    if not addresses:
        raise DestinationUnresolved()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(scheme=parts.scheme, host=host, port=port, target=target, addresses=tuple(addresses))


def validate_destination(url: str) -> None:
    """At configuration: refuse a URL whose host is, or now resolves to, an address webhooks
    may not reach. A name that does not resolve yet is accepted (its DNS may not be set up
    yet); every attempt checks again."""
    try:
        resolve(url)
    except DestinationUnresolved:
        return
    except DestinationNotAllowed:
        raise ValidationError(NOT_ALLOWED, code="address_not_allowed") from None
    except DestinationError as exc:
        raise ValidationError(str(exc), code="invalid") from None


# --- connecting to the checked address ------------------------------------------------------


def tls_context() -> ssl.SSLContext:
    """The system's trust store, with certificate and host name checks. An internal CA for
    on-premise receivers goes in through OpenSSL's SSL_CERT_FILE / SSL_CERT_DIR."""
    return _tls_context((os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")))


@functools.lru_cache(maxsize=4)
def _tls_context(_trust_store: tuple[str | None, str | None]) -> ssl.SSLContext:
    # OpenSSL reads those variables itself; they only key the cache (a context costs ~30 ms).
    return ssl.create_default_context()


def _connect(destination: Destination, timeout: float) -> socket.socket:
    """A TCP connection to one of the checked addresses, in the resolver's order, all of them
    within `timeout`."""
    deadline = time.monotonic() + timeout
    failure: OSError = TimeoutError("timed out")
    for family, kind, proto, sockaddr in destination.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        sock.settimeout(timeout)
        return sock
    raise failure


class PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the destination's checked addresses; the Host header still names the host."""

    def __init__(self, destination: Destination, *, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout)
        self.destination = destination

    def connect(self) -> None:
        self.sock = _connect(self.destination, self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the destination's checked addresses; SNI and the certificate check use the
    host name, as they would without pinning."""

    def __init__(self, destination: Destination, *, timeout: float) -> None:
        self.tls = tls_context()
        super().__init__(destination.host, destination.port, timeout=timeout, context=self.tls)
        self.destination = destination

    def connect(self) -> None:
        sock = _connect(self.destination, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.destination.host)
        except BaseException:
            sock.close()
            raise


def post(url: str, *, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int | None, str]:
    """One attempt: resolve and check the URL's host, POST `body` to a checked address, and
    return (HTTP status or None, error text or ""). Nothing of the answer is read beyond its
    status line and headers, and only the status code is returned."""
    try:
        destination = resolve(url)
    except DestinationError as exc:
        return None, str(exc)
    connection_class = PinnedHTTPSConnection if destination.scheme == "https" else PinnedHTTPConnection
    connection = connection_class(destination, timeout=timeout)
    try:
        connection.request("POST", destination.target, body=body, headers=dict(headers))
        status = connection.getresponse().status
    except TimeoutError:
        return None, f"Timed out after {timeout:g} s."
    except ssl.SSLError as exc:
        # Our side's verdict (e.g. certificate verify failed), not the receiver's words.
        return None, f"TLS failed: {getattr(exc, 'verify_message', None) or exc.reason or type(exc).__name__}"
    except OSError as exc:
        return None, f"Could not connect: {exc.strerror or type(exc).__name__}"
    except http.client.InvalidURL:
        return None, "The URL cannot be requested as it is."
    except http.client.HTTPException as exc:
        # Its message quotes what the other side sent (an SSH banner, say): not kept.
        return None, f"The answer was not HTTP ({type(exc).__name__})."
    except ValueError as exc:
        return None, f"Could not send the request ({type(exc).__name__})."
    finally:
        connection.close()
    if 200 <= status < 300:
        return status, ""
    # The standard phrase, not the receiver's: the reason phrase is the receiver's text too.
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    error = f"HTTP {status} {phrase}".rstrip()
    if 300 <= status < 400:
        error += ": redirects are not followed."
    return status, error

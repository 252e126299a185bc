"""Webhooks cannot reach the console's own network (SSRF): which addresses are allowed, the
check at configuration and at every attempt, the connection pinned to the checked address
(DNS rebinding), no redirects, nothing of the answer kept but its status code, refusals that
say nothing about resolution, and the operator's allow-list for on-premise receivers.

The name server is the test's (`dns`): it is the environment, not the thing under test. The
receivers are real HTTP(S) servers on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction

from audit.models import AuditEvent
from tests.factories import TEST_ACTOR, make_project
from tests.site.test_settings import _load_settings
from tests.webhooks.conftest import TLS_NAME, NameServer, Receiver
from webhooks import egress, services
from webhooks.models import Webhook, WebhookDelivery

PUBLIC = "93.184.215.14"  # globally routable; never connected to in these tests
IP_PATTERN = re.compile(r"\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]*:[0-9a-f.]*", re.IGNORECASE)


def _dispatch(webhook: Webhook) -> WebhookDelivery:
    with transaction.atomic():
        (delivery,) = services.dispatch(project_id=webhook.project_id, event="flag.updated",
                                        payload={"flag": "tool_mode"})
    return delivery


def _saved_before_the_check(project: Any, url: str) -> Webhook:
    """A webhook row as saved before configuration refused such URLs, or whose name pointed
    elsewhere when it was configured: only the attempt's own check stands in the way."""
    return Webhook.objects.create(project_id=project.pk, url=url, secret="s" * 43, events=[])


def _says_nothing_about_resolution(message: str) -> bool:
    return not IP_PATTERN.search(message) and "resolv" not in message.lower()


# --- which addresses ------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "169.254.169.254",       # cloud metadata (link-local)
    "127.0.0.1", "127.1.2.3",  # loopback
    "10.0.0.5", "172.16.0.1", "192.168.1.1",  # private
    "100.64.0.1", "100.127.255.254",  # carrier-grade NAT, shared address space
    "0.0.0.0", "::",  # noqa: S104 - unspecified: connects to this machine
    "224.0.0.1", "ff02::1",   # multicast
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
    "192.0.2.10", "198.18.0.1",  # documentation, benchmarking
    "::1", "fe80::1", "fd00::1", "fec0::1",  # IPv6 loopback, link-local, unique local, site-local
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.5",  # IPv4-mapped
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 to loopback, to metadata
    "2002:7f00:1::1", "2002:a00:5::1",  # 6to4 around loopback, around 10.0.0.5
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
    "::127.0.0.1",            # IPv4-compatible (deprecated)
    "2001:db8::1",            # documentation
])
def test_address_allowed__not_globally_routable__refused(address: str) -> None:
    assert not egress.address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [
    "93.184.215.14", "8.8.8.8", "2606:4700:4700::1111",
    "::ffff:8.8.8.8",     # IPv4-mapped form of a public address
    "64:ff9b::808:808",   # NAT64 form of a public address (IPv6-only hosts with DNS64)
    "2002:808:808::1",    # 6to4 around a public address
])
def test_address_allowed__globally_routable_in_any_form__allowed(address: str) -> None:
    assert egress.address_allowed(ipaddress.ip_address(address))


def test_address_allowed__allow_list__its_networks_in_any_form_but_never_unspecified_or_multicast() -> None:
    # Given an operator's allow-list
    networks = egress.parse_networks(("10.20.0.0/16", "fd00:1::/64", "127.0.0.1/32"))
    # Then its networks are reachable, in IPv4-mapped form too; other internal addresses still are not
    for address in ("10.20.3.4", "::ffff:10.20.3.4", "fd00:1::5", "127.0.0.1"):
        assert egress.address_allowed(ipaddress.ip_address(address), networks), address
    for address in ("10.21.0.1", "fd00:2::5", "127.0.0.2", "169.254.169.254"):
        assert not egress.address_allowed(ipaddress.ip_address(address), networks), address
    # And no allow-list makes 0.0.0.0 or multicast a receiver
    everything = egress.parse_networks(("0.0.0.0/0", "::/0"))
    assert egress.address_allowed(ipaddress.ip_address("10.0.0.1"), everything)
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "::ffff:0.0.0.0"):  # noqa: S104 - addresses, not binds
        assert not egress.address_allowed(ipaddress.ip_address(address), everything), address


def test_allowed_networks__not_a_network__improperly_configured(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.0.0.0/8", "intranet"]
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_NETWORKS"):
        egress.allowed_networks()


def test_settings__allowed_networks_from_the_environment__normalised_and_bad_ones_refuse_to_start() -> None:
    good = _load_settings({"DEBUG": "1", "WEBHOOK_ALLOWED_NETWORKS": " 10.20.3.4/16, fd00:1::/64 ,127.0.0.1"},
                          "s.WEBHOOK_ALLOWED_NETWORKS")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "['10.20.0.0/16', 'fd00:1::/64', '127.0.0.1/32']"
    bad = _load_settings({"DEBUG": "1", "WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}, "s.WEBHOOK_ALLOWED_NETWORKS")
    assert bad.returncode != 0 and "WEBHOOK_ALLOWED_NETWORKS" in bad.stderr
    # And the default is empty, with DEBUG too
    default = _load_settings({"DEBUG": "1", "WEBHOOK_ALLOWED_NETWORKS": ""}, "s.WEBHOOK_ALLOWED_NETWORKS")
    assert default.stdout.strip() == "[]"


# --- at configuration -----------------------------------------------------------------------

NOT_PUBLIC_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:8000/admin/",
    "http://100.64.0.1/hooks",
    "http://[::1]/hooks",
    "http://[::ffff:127.0.0.1]:8000/admin/",
    "http://0.0.0.0:8000/admin/",
    "https://internal.example.test/hooks",  # the name server answers 10.0.0.5
    "https://mixed.example.test/hooks",     # one public address and 10.0.0.5
]


@pytest.fixture
def internal_names(dns: NameServer) -> NameServer:
    dns.set("internal.example.test", ["10.0.0.5"])
    dns.set("mixed.example.test", [PUBLIC, "10.0.0.5"])
    return dns


@pytest.mark.django_db
@pytest.mark.parametrize("url", NOT_PUBLIC_URLS)
def test_webhook_create__address_not_globally_routable__refused_on_url_saying_nothing_about_resolution(
    url: str, internal_names: NameServer
) -> None:
    # Given a project, and no allow-list (the default)
    project = make_project()
    # When an admin configures a webhook to an internal address
    with pytest.raises(ValidationError) as raised:
        services.webhook_create(project_id=project.pk, url=url, events=[], actor=TEST_ACTOR)
    # Then it is refused beside the URL, with a message that does not say what the name resolved to
    assert raised.value.message_dict == {"url": [egress.NOT_ALLOWED]}
    assert _says_nothing_about_resolution(egress.NOT_ALLOWED)
    # And nothing is written
    assert not Webhook.objects.exists() and not AuditEvent.objects.filter(action="webhook.created").exists()


@pytest.mark.django_db
def test_webhook_update__url_to_an_internal_address__refused_and_unchanged(internal_names: NameServer) -> None:
    project = make_project()
    webhook, _ = services.webhook_create(project_id=project.pk, url=f"https://{PUBLIC}/hooks", events=[],
                                         actor=TEST_ACTOR)
    with pytest.raises(ValidationError) as raised:
        services.webhook_update(webhook=webhook, url="https://internal.example.test/hooks", actor=TEST_ACTOR)
    assert raised.value.message_dict == {"url": [egress.NOT_ALLOWED]}
    webhook.refresh_from_db()
    assert webhook.url == f"https://{PUBLIC}/hooks"
    assert not AuditEvent.objects.filter(action="webhook.updated").exists()


@pytest.mark.django_db
def test_webhook_update__name_now_resolves_internally__can_still_be_deactivated(dns: NameServer) -> None:
    # Given a webhook whose name has since been pointed at an internal address
    project = make_project()
    dns.set("hooks.example.test", [PUBLIC])
    webhook, _ = services.webhook_create(project_id=project.pk, url="https://hooks.example.test/h", events=[],
                                         actor=TEST_ACTOR)
    dns.set("hooks.example.test", ["10.0.0.5"])
    # When an admin deactivates it, the URL is not checked again: nothing about it changed
    services.webhook_update(webhook=webhook, active=False, actor=TEST_ACTOR)
    webhook.refresh_from_db()
    assert not webhook.active


@pytest.mark.django_db
def test_webhook_create__name_that_does_not_resolve_yet__accepted(dns: NameServer) -> None:
    # DNS is often set up after the webhook; every attempt checks the name again
    dns.set("not-yet.example.test", [])
    project = make_project()
    webhook, _ = services.webhook_create(project_id=project.pk, url="https://not-yet.example.test/h", events=[],
                                         actor=TEST_ACTOR)
    assert webhook.pk is not None


@pytest.mark.django_db
def test_webhook_create__private_receiver_in_the_allow_list__accepted(dns: NameServer, settings: Any) -> None:
    # Given an on-premise operator who allows the receivers' network
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    dns.set("ci.corp.example.test", ["10.20.0.7"])
    project = make_project()
    # Then webhooks to it are accepted, by name or address; other private addresses still are not
    services.webhook_create(project_id=project.pk, url="https://ci.corp.example.test/h", events=[], actor=TEST_ACTOR)
    services.webhook_create(project_id=project.pk, url="http://10.20.0.8:8080/h", events=[], actor=TEST_ACTOR)
    with pytest.raises(ValidationError):
        services.webhook_create(project_id=project.pk, url="http://10.21.0.8/h", events=[], actor=TEST_ACTOR)
    assert Webhook.objects.count() == 2


# --- at every attempt -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/admin/",
    "http://0.0.0.0:{port}/admin/",
    "http://[::ffff:127.0.0.1]:{port}/admin/",
    "http://[::1]:{port}/admin/",
    "http://localhost.example.test:{port}/admin/",  # the name server answers 127.0.0.1
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://100.64.0.1/hooks",
    "https://mixed.example.test/hooks",
])
def test_deliver__address_not_globally_routable__nothing_sent_and_the_log_says_nothing_about_resolution(
    url: str, receiver: Receiver, internal_names: NameServer, fast_webhooks: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a webhook to an internal address (the loopback ones reach a real receiver), and
    # no allow-list (the default)
    internal_names.set("localhost.example.test", ["127.0.0.1"])
    webhook = _saved_before_the_check(make_project(), url.format(port=receiver.port))
    delivery = _dispatch(webhook)
    # When the attempt runs
    with caplog.at_level(logging.WARNING, logger="webhooks.egress"):
        assert services.deliver(delivery_id=delivery.pk) == "pending"
    # Then nothing was sent, and the log says only that the address is not allowed
    assert receiver.received == []
    delivery.refresh_from_db()
    assert (delivery.last_status_code, delivery.last_error) == (None, egress.NOT_ALLOWED)
    # And the operator's own log names what was refused
    assert "may not reach; refused" in caplog.text


@pytest.mark.django_db
def test_deliver__name_answers_allowed_then_internal__connects_to_the_checked_address_with_the_host_name(
    receiver: Receiver, allow_loopback: Any, dns: NameServer
) -> None:
    # Given a name that answers the receiver's allowed address once, then a loopback address
    # outside the allow-list (DNS rebinding: the second answer is what a second lookup gets)
    webhook = _saved_before_the_check(make_project(), f"http://hooks.example.test:{receiver.port}/hooks/featureops")
    delivery = _dispatch(webhook)
    dns.set("hooks.example.test", ["127.0.0.1"], ["127.0.0.2"])
    # When the attempt runs
    assert services.deliver(delivery_id=delivery.pk) == "succeeded"
    # Then the name was looked up once, and the request went to that checked address
    assert dns.lookups == ["hooks.example.test"]
    (request,) = receiver.received
    # With the Host header naming the host, as configured
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert request.path == "/hooks/featureops"


@pytest.mark.django_db
def test_deliver__name_answers_internal_then_allowed__refused_without_a_second_lookup(
    receiver: Receiver, allow_loopback: Any, dns: NameServer
) -> None:
    # Given a name whose first answer is outside the allow-list and whose later answers are
    # the receiver's allowed address
    webhook = _saved_before_the_check(make_project(), f"http://hooks.example.test:{receiver.port}/hooks/featureops")
    delivery = _dispatch(webhook)
    dns.set("hooks.example.test", ["127.0.0.2"], ["127.0.0.1"])
    # When the attempt runs, it is refused on the answer it checked, and nothing is sent
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_error == egress.NOT_ALLOWED and receiver.received == []
    assert dns.lookups == ["hooks.example.test"]


@pytest.mark.django_db
def test_deliver__https_to_a_pinned_address__sni_host_and_certificate_use_the_name(
    tls_receiver: Receiver, allow_loopback: Any, dns: NameServer
) -> None:
    # Given an HTTPS receiver whose certificate is for hooks.example.test, and two names
    # that answer its address: that one, and another
    dns.set(TLS_NAME, ["127.0.0.1"])
    dns.set("other.example.test", ["127.0.0.1"])
    good = _saved_before_the_check(make_project(), f"https://{TLS_NAME}:{tls_receiver.port}/hooks")
    wrong_name = _saved_before_the_check(make_project("other"), f"https://other.example.test:{tls_receiver.port}/hooks")
    # When each is attempted
    assert services.deliver(delivery_id=_dispatch(good).pk) == "succeeded"
    failed = _dispatch(wrong_name)
    assert services.deliver(delivery_id=failed.pk) == "pending"
    # Then the first went to the pinned address with the name in SNI and Host
    (request,) = tls_receiver.received
    assert request.headers["host"] == f"{TLS_NAME}:{tls_receiver.port}" and tls_receiver.server_names[0] == TLS_NAME
    # And the second was refused by the certificate check, which used its name, not the address
    failed.refresh_from_db()
    assert failed.last_status_code is None and "TLS failed" in failed.last_error
    assert "other.example.test" in failed.last_error


@pytest.mark.django_db
def test_deliver__allow_list__lets_the_private_receiver_through(receiver: Receiver, settings: Any) -> None:
    # Given a webhook to a receiver on 127.0.0.1
    webhook = _saved_before_the_check(make_project(), receiver.url)
    delivery = _dispatch(webhook)
    # When the allow-list is empty, the attempt is refused
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    assert services.deliver(delivery_id=delivery.pk) == "pending" and receiver.received == []
    # And when the operator allows its network, the next attempt is delivered
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=delivery.created_at)
    assert services.deliver(delivery_id=delivery.pk) == "succeeded"
    assert len(receiver.received) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_deliver__redirect_to_an_allowed_address__not_followed_and_a_failed_attempt(
    status: int, receiver: Receiver, allow_loopback: Any
) -> None:
    # Given a receiver that redirects to itself (an address the webhook may reach)
    receiver.script = [(status, 0.0), (200, 0.0)]
    receiver.location = receiver.url + "?followed=1"
    webhook = _saved_before_the_check(make_project(), receiver.url)
    delivery = _dispatch(webhook)
    # When the attempt runs
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    # Then the redirect was not followed, and the attempt failed
    assert [request.path for request in receiver.received] == ["/hooks/featureops"]
    delivery.refresh_from_db()
    assert delivery.last_status_code == status and "redirects are not followed" in delivery.last_error


@pytest.mark.django_db
@pytest.mark.parametrize("status", [200, 403, 500])
def test_deliver__answer_with_a_body_and_a_reason_phrase__only_the_status_code_kept(
    status: int, receiver: Receiver, allow_loopback: Any
) -> None:
    # Given a receiver that answers with something to read in its body and reason phrase
    receiver.script = [(status, 0.0)]
    receiver.reason = "root:x:0:0 SECRET-REASON"
    receiver.body = b'{"AccessKeyId": "SECRET-BODY"}'
    webhook = _saved_before_the_check(make_project(), receiver.url)
    delivery = _dispatch(webhook)
    # When the attempt runs
    services.deliver(delivery_id=delivery.pk)
    # Then the delivery keeps the status code and the standard phrase, nothing the receiver wrote
    row = WebhookDelivery.objects.filter(pk=delivery.pk).values().get()
    assert row["last_status_code"] == status
    assert "SECRET" not in repr(row)
    if status != 200:
        assert row["last_error"] in {"HTTP 403 Forbidden", "HTTP 500 Internal Server Error"}


@pytest.fixture
def banner_server() -> Iterator[int]:
    """A TCP service on 127.0.0.1 that answers anything with a non-HTTP banner (as SSH or
    Redis would); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request:  # the request's headers; the banner answers them
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                connection.sendall(b"SSH-2.0-OpenSSH_9.6 SECRET-BANNER\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.django_db
def test_deliver__answer_not_http__nothing_of_it_kept(banner_server: int, allow_loopback: Any) -> None:
    webhook = _saved_before_the_check(make_project(), f"http://127.0.0.1:{banner_server}/")
    delivery = _dispatch(webhook)
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "not HTTP" in delivery.last_error
    assert "SECRET" not in delivery.last_error and "SSH" not in delivery.last_error


@pytest.mark.django_db
def test_deliver__name_does_not_resolve__failed_attempt_that_says_so(dns: NameServer) -> None:
    dns.set("gone.example.test", [])
    webhook = _saved_before_the_check(make_project(), "https://gone.example.test/hooks")
    delivery = _dispatch(webhook)
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert (delivery.last_status_code, delivery.last_error) == (None, egress.UNRESOLVED)

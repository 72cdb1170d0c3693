"""Connecting to the broker: the paho client built from the settings, and what went wrong, in one sentence.

:func:`make_client` applies credentials, TLS and reconnect delays;
:func:`check_broker` connects once (``deepfer-edge check``). The ``describe_*``
functions turn what paho and OpenSSL report into one sentence naming
``host:port``, what was observed and the setting to check; the sink logs the
same sentences when a connection fails, so ``check`` and the daemon's log agree.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge.settings import ConfigError, MqttSettings

log = logging.getLogger(__name__)

_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


def make_client(settings: MqttSettings, client_id: str = "", password: str | None = None) -> mqtt.Client:
    """A paho client (callback API 2, MQTT 3.1.1) with the credentials and TLS of ``settings``, not connected.

    ``password`` defaults to the settings' (:meth:`MqttSettings.login_password`); raises ConfigError for
    unreadable password or TLS files. Reconnect delays follow the settings.
    """
    if password is None:
        password = settings.login_password()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, password)
    elif password:
        log.warning("mqtt.password is set without mqtt.username; MQTT sends no password without a user name, so it is ignored")
    if settings.tls:
        for field, path in (("mqtt.ca_file", settings.ca_file), ("mqtt.cert_file", settings.cert_file), ("mqtt.key_file", settings.key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{field} {path} does not exist; fix the path or remove the setting")
        try:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"TLS files cannot be used ({exc}); check mqtt.ca_file, mqtt.cert_file and mqtt.key_file are PEM files that belong together"
            ) from None
        client.tls_insecure_set(settings.tls_insecure)
    elif settings.ca_file or settings.cert_file:
        log.warning("mqtt.ca_file/cert_file are set but mqtt.tls is false; the connection is NOT encrypted")
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
    return client


def describe_exception(exc: BaseException | None, settings: MqttSettings) -> str:
    """One sentence for a failed connection attempt: what happened at host:port and what to check."""
    where = f"{settings.host}:{settings.port}"
    if settings.tls and _plain_port_answer(exc):
        return (
            f"MQTT broker {where} dropped the connection during the TLS handshake ({_reason(exc)}); "
            "this port does not seem to speak TLS: set mqtt.port to the broker's TLS port (usually 8883) or mqtt.tls = false"
        )
    if isinstance(exc, ssl.SSLError) and (hint := tls_rejection(exc.reason or "", str(exc), settings)):
        return hint
    if isinstance(exc, ssl.SSLCertVerificationError):
        # OpenSSL's own errors carry these; one raised by ssl.match_hostname (paho's check) may not.
        code = getattr(exc, "verify_code", None)
        detail = getattr(exc, "verify_message", None) or str(exc)
        if code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return (
                f"TLS certificate of MQTT broker {where} does not match the name {settings.host!r} ({detail}); "
                "set mqtt.host to a name the certificate holds, or mqtt.tls_insecure = true for testing"
            )
        return (
            f"TLS certificate of MQTT broker {where} is not trusted ({detail}); "
            "set mqtt.ca_file to the CA certificate that signed the broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with MQTT broker {where} failed ({exc.reason or exc}); "
            "check mqtt.ca_file, mqtt.cert_file and mqtt.key_file against the broker's TLS settings"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"MQTT broker {where} refused the connection; check that the broker runs and listens there (mqtt.host, mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve MQTT broker host {settings.host!r} ({exc.strerror}); check mqtt.host"
    if isinstance(exc, TimeoutError):
        return f"no answer from MQTT broker {where}; check mqtt.host, mqtt.port and any firewall between"
    if isinstance(exc, OSError):
        return f"cannot connect to MQTT broker {where} ({exc.strerror or exc}); check mqtt.host and mqtt.port"
    if exc is None:
        return f"cannot connect to MQTT broker {where}; check mqtt.host and mqtt.port"
    return f"cannot connect to MQTT broker {where} ({exc!r})"


def describe_refusal(reason: ReasonCode, settings: MqttSettings) -> str:
    """One sentence for a CONNACK refusal (bad credentials, not authorised, …)."""
    where = f"{settings.host}:{settings.port}"
    name = reason.getName()
    if name in ("Not authorized", "Bad user name or password"):
        who = f"user {settings.username!r}" if settings.username else "anonymous clients (no mqtt.username)"
        return (
            f"MQTT broker {where} rejected the login of {who} ({name}); "
            "check mqtt.username and mqtt.password / mqtt.password_file, and the broker's ACL"
        )
    if name == "Client identifier not valid":
        return f"MQTT broker {where} rejected the client id ({name}); set mqtt.client_id"
    return f"MQTT broker {where} refused the connection ({name})"


# OpenSSL alerts a broker sends when it refuses the client's certificate (or the lack of one).
_CERT_REQUIRED = ("TLSV13_ALERT_CERTIFICATE_REQUIRED",)
_CERT_REJECTED = (
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR",
)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _plain_port_answer(exc: BaseException | None) -> bool:
    """What a TLS client sees from a port that speaks plain MQTT: a reset, an EOF or non-TLS bytes mid-handshake."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return True
    return isinstance(exc, ssl.SSLError) and exc.reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "RECORD_LAYER_FAILURE")


def tls_rejection(reason: str, detail: str, settings: MqttSettings) -> str | None:
    """The sentence for a broker's TLS alert about the client certificate, or None for other TLS errors."""
    where = f"{settings.host}:{settings.port}"
    if reason in _CERT_REQUIRED or (reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and settings.cert_file is None):
        if settings.cert_file is None:
            return (
                f"MQTT broker {where} requires a client certificate ({detail}); "
                "set mqtt.cert_file and mqtt.key_file to a certificate signed by a CA the broker trusts"
            )
        return f"MQTT broker {where} did not accept the client certificate {settings.cert_file} ({detail}); check mqtt.cert_file and mqtt.key_file"
    if reason in _CERT_REJECTED:
        return (
            f"MQTT broker {where} rejected the client certificate {settings.cert_file or '(none)'} ({detail}); "
            "set mqtt.cert_file and mqtt.key_file to a certificate signed by a CA the broker trusts (its cafile), "
            "and check that it has not expired"
        )
    return None


def describe_receive_error(text: str, settings: MqttSettings) -> str:
    """One sentence for a connection that failed while waiting for the login answer, from paho's socket error text."""
    where = f"{settings.host}:{settings.port}"
    detail = text.removeprefix("failed to receive on socket: ")
    reason = detail[len("[SSL: "):detail.find("]")] if detail.startswith("[SSL: ") else ""
    if hint := tls_rejection(reason, detail, settings):
        return hint
    if not settings.tls:
        # A TLS port answers a plain MQTT login by resetting or closing the connection.
        return (
            f"MQTT broker {where} broke off the connection before answering ({detail}); "
            "if it expects TLS set mqtt.tls = true (and mqtt.port, usually 8883)"
        )
    if "EOF" in detail:
        # A broker that refuses the client certificate after a TLS 1.3 handshake often just closes; its alert may be lost.
        cert = f"the client certificate {settings.cert_file}" if settings.cert_file else "a missing client certificate"
        return (
            f"MQTT broker {where} closed the TLS connection before answering the login ({detail}); "
            f"it may have refused {cert}: check mqtt.cert_file and mqtt.key_file, and the broker's log"
        )
    return f"MQTT broker {where} broke off the connection before answering the login ({detail}); check the broker's log"


def describe_early_close(settings: MqttSettings) -> str:
    """The broker closed the connection without answering the login and without an error on our side."""
    where = f"{settings.host}:{settings.port}"
    if settings.tls:
        # The handshake succeeded, so the port does speak TLS: the refusal came after it.
        return (
            f"MQTT broker {where} closed the connection after the TLS handshake without answering the login; "
            "check the broker's log (it may refuse this client id, certificate or protocol version)"
        )
    return (
        f"MQTT broker {where} closed the connection before answering; "
        "if it expects TLS set mqtt.tls = true (and mqtt.port, usually 8883)"
    )


def describe_no_answer(settings: MqttSettings, waited_s: float) -> str:
    """The connection stayed open but the login was never answered: a hung broker or something that is not MQTT."""
    return (
        f"MQTT broker {settings.host}:{settings.port} accepted the connection but did not answer the login within {waited_s:g} s; "
        "check that it is an MQTT broker and that it is not hung or overloaded"
    )


class SocketErrors:
    """Paho reports why a read failed only in its log; keep the attempt's first such line for the error sentence.

    The first one is the cause (a TLS alert); reads after it only see the closed socket.
    """

    def __init__(self) -> None:
        self.last: str | None = None

    def reset(self) -> None:
        """A new connection attempt begins."""
        self.last = None

    def on_log(self, client: mqtt.Client, userdata: Any, level: int, text: Any) -> None:
        message = str(text)
        if self.last is None and level == mqtt.MQTT_LOG_ERR and message.startswith("failed to receive on socket"):
            self.last = message


def check_broker(settings: MqttSettings, timeout: float = 5.0) -> str | None:
    """Connect once: None when the broker is reachable and accepts the credentials, else an error sentence.

    Uses its own client id (``…-check``) so that it does not push a running
    daemon's session off the broker, and no last will.
    """
    try:
        client = make_client(settings, f"{settings.client_id or 'deepfer'}-check-{time.monotonic_ns() % 100000}")
    except ConfigError as exc:
        return str(exc)
    result: dict[str, Any] = {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        result["reason"] = reason

    client.on_connect = on_connect
    socket_errors = SocketErrors()
    client.on_log = socket_errors.on_log
    client.connect_timeout = timeout
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, int(timeout) + 5))
    except OSError as exc:
        return describe_exception(exc, settings)
    deadline = time.monotonic() + timeout
    try:
        while "reason" not in result and time.monotonic() < deadline:
            if client.loop(timeout=0.1) is not MQTTErrorCode.MQTT_ERR_SUCCESS and "reason" not in result:
                if socket_errors.last:
                    return describe_receive_error(socket_errors.last, settings)
                return describe_early_close(settings)
        reason = result.get("reason")
        if reason is None:
            return describe_no_answer(settings, timeout)
        if reason.is_failure:
            return describe_refusal(reason, settings)
        return None
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone already; nothing to clean up then
            client.disconnect()

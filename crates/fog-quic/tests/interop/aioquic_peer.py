"""aioquic 1.7.2 as the independent QUIC peer of fog-quic's interop tests.

    aioquic_peer.py server <our-key-hex> <alpn> <seconds>
    aioquic_peer.py client <port> <our-key-hex> <alpn> <bytes> <seconds>

Both sides use an Ed25519 self-signed certificate made here and check the other side's
certificate by its public key (the hex key of the fog-quic endpoint): aioquic verifies the
TLS 1.3 CertificateVerify signature itself, `verify_mode = CERT_NONE` only skips the CA chain,
and the key is compared once the handshake completes. The server asks for a client certificate
(aioquic does so only when `_request_client_certificate` is set, which we set on its server
contexts). The server echoes every bidirectional stream; the client sends <bytes> of seeded data
on one stream, reads the echo, and prints DONE <sha256> if it matches.
"""

import asyncio
import hashlib
import ssl
import sys

from aioquic import tls
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived, ConnectionTerminated
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
import datetime

_init = tls.Context.__init__


def _init_requesting_client_certs(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if not self._is_client:
        self._request_client_certificate = True


tls.Context.__init__ = _init_requesting_client_certs


def identity():
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aioquic peer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print("KEY", raw.hex(), flush=True)
    return cert, key


def configuration(is_client, alpn):
    config = QuicConfiguration(is_client=is_client, alpn_protocols=[alpn])
    config.verify_mode = ssl.CERT_NONE
    config.certificate, config.private_key = identity()
    return config


def peer_key(quic):
    cert = quic.tls._peer_certificate
    if cert is None:
        return None
    return cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


class Echo(QuicConnectionProtocol):
    expected = None

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            got = peer_key(self._quic)
            if got == Echo.expected and event.alpn_protocol is not None:
                print("PEER OK", event.alpn_protocol, flush=True)
            else:
                print("PEER BAD", got, flush=True)
                self._quic.close(error_code=0x1, reason_phrase="unexpected peer key")
        elif isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
            if event.end_stream:
                print("ECHOED", event.stream_id, flush=True)
        elif isinstance(event, ConnectionTerminated):
            print("CLOSED", event.error_code, event.reason_phrase, flush=True)
        self.transmit()


async def run_server(expected, alpn, seconds):
    Echo.expected = expected
    server = await serve("127.0.0.1", 0, configuration=configuration(False, alpn), create_protocol=Echo)
    print("PORT", server._transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.sleep(seconds)
    server.close()


def seeded(n):
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.received += event.data
            if event.end_stream and not self.done.done():
                self.done.set_result(True)
        elif isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_exception(RuntimeError(f"closed: {event.error_code} {event.reason_phrase}"))


async def run_client(port, expected, alpn, size):
    config = configuration(True, alpn)
    async with connect("127.0.0.1", port, configuration=config, create_protocol=Client) as client:
        got = peer_key(client._quic)
        if got != expected:
            print("PEER BAD", got, flush=True)
            sys.exit(4)
        print("PEER OK", flush=True)
        data = seeded(size)
        stream = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream, data, end_stream=True)
        client.transmit()
        await client.done
        if bytes(client.received) != data:
            print("MISMATCH", len(client.received), flush=True)
            sys.exit(5)
        print("DONE", hashlib.sha256(data).hexdigest(), flush=True)
        client.close(error_code=0, reason_phrase="done")


def main():
    role = sys.argv[1]
    if role == "server":
        expected, alpn, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
        asyncio.run(run_server(expected, alpn, seconds))
    else:
        port, expected, alpn, size, seconds = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
        asyncio.run(asyncio.wait_for(run_client(port, expected, alpn, size), seconds))


main()

"""aiortc 1.16.0 as the independent WebRTC peer of fog-rtc's interop test (tests/interop.rs).

Usage: aiortc_peer.py offer|answer IN_FILE [SECONDS]

answer: waits for IN_FILE (the offer's SDP, written whole by the test), prints
        `ANSWER <json string>` on one line.
offer:  opens a data channel `aiortc`, prints `OFFER <json string>`, then waits for IN_FILE (the
        answer's SDP).
Either way it echoes every message on every channel back on the same channel, prints
`OPEN <label>` per channel and `CLOSED <label>` when one closes, and exits when a channel closes,
the connection fails, or SECONDS (default 20) pass. Loopback only: no STUN or TURN servers, and
host candidates on 127.0.0.1 (aioice skips 127.0.0.1 when gathering, so its host-address function
is replaced).
"""

import asyncio
import json
import os
import sys

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402


def say(*words):
    print(*words, flush=True)


async def read_file(path, limit):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not os.path.exists(path):
        if loop.time() > deadline:
            raise TimeoutError(f"no {path}")
        await asyncio.sleep(0.02)
    with open(path) as f:
        return f.read()


async def main():
    role, in_file = sys.argv[1], sys.argv[2]
    limit = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    # No ICE servers: aiortc would otherwise ask a public STUN server.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    done = asyncio.Event()

    def serve(channel):
        @channel.on("open")
        def on_open():
            say("OPEN", channel.label)

        if channel.readyState == "open":
            say("OPEN", channel.label)

        @channel.on("message")
        def on_message(message):
            channel.send(message)

        @channel.on("close")
        def on_close():
            say("CLOSED", channel.label)
            done.set()

    pc.on("datachannel", serve)

    @pc.on("connectionstatechange")
    async def on_state():
        say("STATE", pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            done.set()

    if role == "answer":
        offer = await read_file(in_file, limit)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        say("ANSWER", json.dumps(pc.localDescription.sdp))
    else:
        serve(pc.createDataChannel("aiortc"))
        await pc.setLocalDescription(await pc.createOffer())
        say("OFFER", json.dumps(pc.localDescription.sdp))
        answer = await read_file(in_file, limit)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    try:
        await asyncio.wait_for(done.wait(), timeout=limit)
    except asyncio.TimeoutError:
        say("TIMEOUT")
    await pc.close()


asyncio.run(main())

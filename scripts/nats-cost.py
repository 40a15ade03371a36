#!/usr/bin/env python3
"""nats-server's own CPU per published message, without the fabric (BENCHMARKS.md, issue 12).

Starts a nats-server pinned to CPU 1 (JetStream on, a fresh store), publishes RATE messages a
second for SECS seconds from this process (pin it elsewhere: `taskset -c 0`), one message at a
time as independent senders would, and prints the server's CPU (from /proc) per message:

  core                 plain publish, one subscriber
  js                   JetStream publish (PubAck) into a file stream
  js_dedupe            ... with a Nats-Msg-Id per message
  js_dedupe_republish  ... and the stream's republish to one subscriber: the fabric's write path

  taskset -c 0 scripts/nats-cost.py core        # NATS_BIN=... for another nats-server
"""
import asyncio, json, os, socket, subprocess, sys, tempfile, time

import nats
from nats.js.api import RePublish, StreamConfig

RATE = int(os.environ.get("RATE", "1000"))
SECS = float(os.environ.get("SECS", "10"))
BIN = os.environ.get("NATS_BIN", "nats-server")
SCENARIOS = ("core", "js", "js_dedupe", "js_dedupe_republish")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_secs(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(scenario):
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "1", BIN, "-js", "-sd", tempfile.mkdtemp(), "-p", str(port), "-a", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until the server listens
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        sub_nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        received = 0

        async def count(_msg):
            nonlocal received
            received += 1

        if scenario == "core":
            await sub_nc.subscribe("chat.msg.0.*", cb=count)
        else:
            config = StreamConfig(name="S", subjects=["chat.msg.0.*"], duplicate_window=120)
            if scenario == "js_dedupe_republish":
                config.republish = RePublish(src="chat.msg.0.*", dest="chat.live.0.{{wildcard(1)}}")
                await sub_nc.subscribe("chat.live.0.*", cb=count)
            await js.add_stream(config)
        await sub_nc.flush()
        body = b'{"conv":"c1","sender":"u1","client_id":"x","body":"' + b"a" * 100 + b'","ts":1}'
        n = int(RATE * SECS)
        acks = []
        before, start = cpu_secs(server.pid), time.monotonic()
        for i in range(n):
            subject = f"chat.msg.0.c{i % 100}"
            if scenario == "core":
                await nc.publish(subject, body)
            else:
                headers = {"Nats-Msg-Id": f"m{i}"} if "dedupe" in scenario else None
                acks.append(asyncio.create_task(js.publish(subject, body, headers=headers)))
            delay = start + (i + 1) / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*acks)
        await nc.flush()
        used = cpu_secs(server.pid) - before
        print(json.dumps({"scenario": scenario, "rate": RATE, "messages": n,
                          "nats_us_per_message": round(used * 1e6 / n, 1), "received": received}))
        await nc.close()
        await sub_nc.close()
    finally:
        server.kill()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}}")
    asyncio.run(run(sys.argv[1]))

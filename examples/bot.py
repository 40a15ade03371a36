"""Post into a chatfabric conversation and read it back with a stock NATS client (nats-py).

    pip install nats-py
    python3 examples/bot.py nats://echo-bot:echo-bot-dev-password@127.0.0.1:4222 echo-bot lobby "hello"

The bot's nats-server user may only publish chat.in.<conv>.<bot> and chat.read.<conv>.<bot>,
subscribe chat.live.*.<conv> and its own inbox _INBOX.<bot>.> (see nats/config/auth.conf).
"""
import asyncio
import json
import sys
import uuid

import nats


async def main(url: str, bot: str, conv: str, text: str) -> None:
    nc = await nats.connect(url, inbox_prefix=f"_INBOX.{bot}".encode())

    # Post: a request; the answer comes once the message is stored. Retrying with the same
    # client_id stores it once.
    post = {"client_id": str(uuid.uuid4()), "body": text}
    reply = await nc.request(f"chat.in.{conv}.{bot}", json.dumps(post).encode(), timeout=5)
    ack = json.loads(reply.data)
    print(json.dumps(ack))
    if ack.get("op") != "ack":
        sys.exit(1)

    # Read: the newest page of history (newest first).
    reply = await nc.request(f"chat.read.{conv}.{bot}", json.dumps({"limit": 5}).encode(), timeout=5)
    page = json.loads(reply.data)
    print(json.dumps(page))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

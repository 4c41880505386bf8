"""Talk to a running palyrad with the official OpenAI client.

    make run                      # in another terminal; prints the URL and the token file
    export PALYRA_API_TOKEN=$(palyra tokens create demo --scope 'compat.*' | head -1)
    python examples/openai_client.py http://127.0.0.1:7142

A scoped API token (``palyra tokens create``) is what a client should hold; without
``PALYRA_API_TOKEN`` the example falls back to the admin token file (second argument,
default ``.palyra-state/admin.token``), which the OpenAI routes accept too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import openai


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7142"
    token_file = Path(sys.argv[2] if len(sys.argv) > 2 else ".palyra-state/admin.token")
    key = os.environ.get("PALYRA_API_TOKEN") or token_file.read_text().strip()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    print(reply.choices[0].message.content, reply.usage)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream these words"}], stream=True
    )
    print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))


if __name__ == "__main__":
    main()

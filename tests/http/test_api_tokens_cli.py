"""``palyra tokens create|list|revoke`` against a real ``palyrad``."""

from __future__ import annotations

import httpx
import orjson

from palyra.cli import main as cli
from tests.http.servers import Palyrad


def test_tokens_create_list_revoke(tmp_path, capsys):
    state = tmp_path / "state"
    with Palyrad(state) as daemon:
        base = ["--url", daemon.url, "--state-dir", str(state)]
        assert cli.main([*base, "tokens", "create", "bot", "--scope", "models.read",
                         "--scope", "chat.create", "--rate-limit", "60", "--expires-in",
                         "3600", "--json"]) == 0
        captured = capsys.readouterr()
        made = orjson.loads(captured.out)
        assert "shown only once" in captured.err and made["token"] not in captured.err
        assert made["scopes"] == ["models.read", "chat.create"]
        assert made["rate_limit_per_minute"] == 60 and made["expires_at_unix_ms"]
        models = httpx.get(f"{daemon.url}/v1/models",
                           headers={"Authorization": f"Bearer {made['token']}"})
        assert models.status_code == 200

        assert cli.main([*base, "tokens", "create", "human", "--scope", "compat.*"]) == 0
        human = capsys.readouterr().out
        assert human.splitlines()[0].startswith("palyra_") and "api:human" in human
        assert cli.main([*base, "tokens", "create", "bad", "--scope", "root"]) == 1
        assert "invalid_argument" in capsys.readouterr().err

        assert cli.main([*base, "tokens", "list"]) == 0
        listing = capsys.readouterr().out
        assert "bot" in listing and "human" in listing and made["token"] not in listing
        assert cli.main([*base, "tokens", "revoke", made["token_id"]]) == 0
        assert f"revoked {made['token_id']}" in capsys.readouterr().out
        assert cli.main([*base, "tokens", "list", "--json"]) == 0
        states = {t["name"]: t["state"] for t in orjson.loads(capsys.readouterr().out)["api_tokens"]}
        assert states == {"bot": "revoked", "human": "active"}
        models = httpx.get(f"{daemon.url}/v1/models",
                           headers={"Authorization": f"Bearer {made['token']}"})
        assert models.status_code == 401
        assert daemon.terminate() == 0

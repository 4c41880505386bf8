"""``PALYRA_<SECTION>_<KEY>`` environment overrides over the TOML config."""

from __future__ import annotations

import pytest

import palyra
from palyra.cli import daemon
from palyra.cli.daemon import load_config


def test_env_overrides_lay_over_the_file_and_keep_its_other_keys(tmp_path):
    path = tmp_path / "palyra.toml"
    path.write_text('[runs]\nmax_input_bytes = 100\n[tools]\nallowed = ["palyra.sleep"]\n'
                    '[provider]\nkind = "openai_compatible"\nbase_url = "http://127.0.0.1:9/v1"\n')
    env = {"PALYRA_RUNS_MAX_INPUT_BYTES": "4096", "PALYRA_TOOLS_ALLOWED": '["palyra.echo"]',
           "PALYRA_PROVIDER_API_KEY": "sk-from-the-environment", "PALYRA_LEARNING_ENABLED": "false",
           # variables that name no config section are not ours to judge
           "PALYRA_STATE_DIR": "/elsewhere", "PALYRA_RATE_LIMIT_PER_S": "5", "PALYRA_URL": "x"}
    config = load_config(str(path), env)
    assert config.runs.max_input_bytes == 4096
    assert list(config.tools.allowed) == ["palyra.echo"]
    assert config.provider.kind == "openai_compatible"
    assert config.provider.options == {"base_url": "http://127.0.0.1:9/v1",
                                       "api_key": "sk-from-the-environment"}
    assert config.learning.enabled is False
    assert load_config(None, {"PALYRA_RUNS_MAX_INPUT_BYTES": "77"}).runs.max_input_bytes == 77
    assert load_config(None, {}) == palyra.Config()


@pytest.mark.parametrize(("env", "named"), [
    ({"PALYRA_RUNS_MAX_INPUT_BYTE": "1"}, "runs.max_input_byte (from $PALYRA_RUNS_MAX_INPUT_BYTE)"),
    ({"PALYRA_JOURNAL_SYNCHRONOUS": "SOMETIMES"}, "journal"),
])
def test_a_bad_override_names_the_key(env, named):
    with pytest.raises(palyra.InvalidInput) as err:
        load_config(None, env)
    assert named in str(err.value)


@pytest.mark.parametrize(("env", "key"), [
    ({"PALYRA_RUNS_MAX_TOOL_CALLS": "true"}, "runs.max_tool_calls"),
    ({"PALYRA_RUNS_WORKERS": "2.5"}, "runs.workers"),
    ({"PALYRA_MEMORY_RETENTION_MAX_ENTRIES": "true"}, "memory.retention_max_entries"),
    ({"PALYRA_JOURNAL_MAX_BATCH": "true"}, "journal.max_batch"),
    ({"PALYRA_SUPERVISION_PROBE_INTERVAL": "true"}, "supervision.probe_interval"),
])
def test_a_bool_or_fraction_for_a_count_is_refused(env, key):
    with pytest.raises(palyra.InvalidInput, match=f"{key} must be a") as err:
        load_config(None, env)
    assert err.value.details == {"key": key}


@pytest.mark.parametrize(("text", "key", "wanted"), [
    # a quoted "false" is a truthy string: it must not switch remote binding on
    ('[http]\nallow_remote_bind = "false"\n', "http.allow_remote_bind", "true or false"),
    ("[learning]\nenabled = 1\n", "learning.enabled", "true or false"),
    ("[journal]\nsynchronous = 1\n", "journal.synchronous", "a string"),
])
def test_a_switch_or_text_of_another_type_is_refused(tmp_path, text, key, wanted):
    path = tmp_path / "palyra.toml"
    path.write_text(text)
    with pytest.raises(palyra.InvalidInput, match=f"{key} must be {wanted}") as err:
        load_config(str(path), {})
    assert err.value.details == {"key": key}


def test_numbers_of_the_right_kind_still_load():
    config = load_config(None, {"PALYRA_SUPERVISION_PROBE_INTERVAL": "2",
                                "PALYRA_MEMORY_RETENTION_MAX_ENTRIES": "10",
                                "PALYRA_HTTP_SSE_KEEPALIVE_S": "1.5"})
    assert config.supervision.probe_interval == 2
    assert config.memory.retention_max_entries == 10
    assert config.http.sse_keepalive_s == 1.5


def test_palyrad_refuses_a_bad_override_as_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PALYRA_SUPERVISION_PROBE_INTERVALL", "1")
    assert daemon.main(["--state-dir", str(tmp_path / "state"), "--http", "127.0.0.1:0"]) == 2
    assert "supervision.probe_intervall" in capsys.readouterr().err


def test_http_section_gives_bind_and_rate_limits_under_flags_and_env(tmp_path, capsys, monkeypatch):
    path = tmp_path / "palyra.toml"
    path.write_text('[http]\nbind = "0.0.0.0:7142"\n[http.rate_limits]\nper_s = 7\ntoken_per_s = 9\n')
    config = load_config(str(path), {})
    assert config.http.bind == "0.0.0.0:7142"
    limits = daemon.rate_limits(config, {"PALYRA_RATE_LIMIT_TOKEN_PER_S": "11"})
    assert (limits.per_s, limits.token_per_s, limits.loopback_per_s) == (7, 11, 120)
    # a remote bind from the file still needs the acknowledgement
    monkeypatch.delenv("PALYRA_HTTP", raising=False)
    assert daemon.main(["--state-dir", str(tmp_path / "s"), "--config", str(path)]) == 2
    assert "--allow-remote-bind" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[http.rate_limits]\nper_second = 1\n")
    with pytest.raises(palyra.InvalidInput, match="http.rate_limits"):
        daemon.rate_limits(load_config(str(bad), {}))
    with pytest.raises(palyra.InvalidInput, match="http"):
        load_config(None, {"PALYRA_HTTP_BIND": "no-port"})


def test_cpu_affinity_choice():
    allowed = {0, 1, 2, 3}
    assert daemon.choose_cpus("all", allowed, 7) is None
    assert daemon.choose_cpus("auto", allowed, 7) == {3}  # by pid: daemons spread out
    assert daemon.choose_cpus("auto", allowed, 8) == {0}
    assert daemon.choose_cpus("1,2", allowed, 7) == {1, 2}
    for bad in ("9", "one", ""):
        with pytest.raises(palyra.InvalidInput, match="--cpus"):
            daemon.choose_cpus(bad, allowed, 7)


def test_palyrad_rejects_a_bad_cpu_list(tmp_path, capsys):
    assert daemon.main(["--state-dir", str(tmp_path / "s"), "--cpus", "99"]) == 2
    assert "--cpus 99" in capsys.readouterr().err

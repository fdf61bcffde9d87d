"""Configuration: the example file is the defaults, every key is validated, errors name the key."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fwdmail import config
from fwdmail.cli import cli
from fwdmail.config import Config, ConfigError, from_dict, load

EXAMPLE = Path(__file__).resolve().parents[2] / "fwdmail.example.toml"


def all_keys(cls: type = Config, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf key of the config dataclasses with its annotated type, as (path, type)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(all_keys(tp, (*prefix, f.name)))
        else:
            out.append(((*prefix, f.name), tp))
    return out


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        data = {part: data}
    return data


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        from_dict(data)
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ the example file


def test_example_file_is_exactly_the_defaults() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert from_dict(data) == Config()
    assert load(None) == Config()


def test_example_file_names_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    missing = []
    for path, _ in all_keys():
        node: Any = data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                missing.append(".".join(path))
                break
            node = node[part]
    assert missing == [], f"keys not in fwdmail.example.toml: {missing}"


def undocumented_keys(toml_text: str) -> list[str]:
    """Key lines not under a comment: each key (or run of keys) must follow a comment saying what it is."""
    undocumented = []
    previous = ""
    for line in toml_text.splitlines():
        text = line.strip()
        after_comment_or_key = previous.startswith("#") or "=" in previous
        if text and not text.startswith(("#", "[")) and not after_comment_or_key:
            undocumented.append(text)
        if text:
            previous = "#" if text.startswith("#") else text
    return undocumented


def test_example_file_documents_every_key_inline() -> None:
    assert undocumented_keys("[a]\n# doc\nx = 1\ny = 2\n\n[b]\n# doc\nz = 3\n") == []
    assert undocumented_keys("# doc\nx = 1\n[b]\nz = 3\n# doc\nw = 4\n") == ["z = 3"]
    assert undocumented_keys(EXAMPLE.read_text()) == []


def test_example_tables_and_units() -> None:
    text = EXAMPLE.read_text()
    tables = ("mx", "submission", "tls", "srs", "dns", "delivery", "delivery.routes", "queue", "retention")
    for table in tables:
        assert f"[{table}]" in text
    assert "seconds" in text and "bytes" in text and "days" in text


# ------------------------------------------------------------------ types, every key


def _wrong_value(tp: Any) -> Any:
    if tp in (int, float):
        return "10"
    if tp is bool:
        return "yes"
    if tp is str:
        return 5
    if typing.get_origin(tp) is tuple:
        return [1, 2]
    if typing.get_origin(tp) is dict:
        return 5
    raise AssertionError(f"no wrong value for {tp}")


@pytest.mark.parametrize("path,tp", all_keys(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_every_key_rejects_a_wrong_type(path: tuple[str, ...], tp: Any) -> None:
    message = error(nested(path, _wrong_value(tp)))
    assert message.startswith(".".join(path) + ": must be"), message


NUMERIC = [(p, tp) for p, tp in all_keys() if tp in (int, float)]


@pytest.mark.parametrize("path,tp", NUMERIC, ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_every_number_rejects_negative_values(path: tuple[str, ...], tp: Any) -> None:
    message = error(nested(path, -1))
    assert message.startswith(".".join(path)), message


FLOATS = [p for p, tp in all_keys() if tp is float]


@pytest.mark.parametrize("path", FLOATS, ids=".".join)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_floats_must_be_finite(path: tuple[str, ...], value: float) -> None:
    assert error(nested(path, value)).startswith(".".join(path))


def test_integers_do_not_take_fractions_but_floats_take_integers() -> None:
    assert error({"mx": {"max_recipients": 1.5}}).startswith("mx.max_recipients: must be an integer")
    assert error({"mx": {"max_recipients": True}}).startswith("mx.max_recipients")
    assert from_dict({"dns": {"timeout": 3}}).dns.timeout == 3.0


# ------------------------------------------------------------------ unknown keys and tables


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    assert error({"hostnme": "x"}) == "hostnme: unknown key (did you mean hostname?)"
    assert error({"mx": {"max_recipient": 3}}) == (
        "mx.max_recipient: unknown key (did you mean mx.max_recipients?)")
    assert error({"nonsense": 1}) == "nonsense: unknown key"
    assert error({"delivery": {"routes": {"a.example": "127.0.0.1:25"}, "rootes": {}}}).startswith(
        "delivery.rootes: unknown key")


def test_a_table_must_be_a_table() -> None:
    assert error({"mx": 5}).startswith("mx: must be a table")
    assert error({"mx": {"listen": {"a": "b"}}}).startswith("mx.listen: must be")


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("data,key", [
    ({"log_level": "verbose"}, "log_level"),
    ({"data_dir": ""}, "data_dir"),
    ({"hostname": "not a host"}, "hostname"),
    ({"hostname": "-bad.example"}, "hostname"),
    ({"hostname": "a" * 64 + ".example"}, "hostname"),
    ({"shutdown_timeout": 0}, "shutdown_timeout"),
    ({"mx": {"listen": ["127.0.0.1"]}}, "mx.listen"),
    ({"mx": {"listen": ["127.0.0.1:99999"]}}, "mx.listen"),
    ({"mx": {"listen": ["127.0.0.1:"]}}, "mx.listen"),
    ({"mx": {"listen": [":25"]}}, "mx.listen"),
    ({"mx": {"listen": ["::1:25"]}}, "mx.listen"),
    ({"mx": {"listen": ["[not-v6]:25"]}}, "mx.listen"),
    ({"mx": {"listen": ["bad host:25"]}}, "mx.listen"),
    ({"mx": {"listen": ["127.0.0.1:٢٥"]}}, "mx.listen"),
    ({"mx": {"max_message_size": 0}}, "mx.max_message_size"),
    ({"submission": {"listen_tls": ["nope"]}}, "submission.listen_tls"),
    ({"submission": {"max_future_date_days": 0}}, "submission.max_future_date_days"),
    ({"tls": {"cert": "/x/cert.pem"}}, "tls"),
    ({"srs": {"max_age_days": 1024}}, "srs.max_age_days"),
    ({"srs": {"domain": "bad_domain!"}}, "srs.domain"),
    ({"dns": {"nameservers": ["dns.example:53"]}}, "dns.nameservers"),
    ({"dns": {"nameservers": ["127.0.0.1:0"]}}, "dns.nameservers"),
    ({"dns": {"nameservers": ["127.0.0.1"]}}, "dns.nameservers"),
    ({"delivery": {"starttls": "required"}}, "delivery.starttls"),
    ({"delivery": {"port": 0}}, "delivery.port"),
    ({"delivery": {"port": 65536}}, "delivery.port"),
    ({"delivery": {"routes": {"example.com": "127.0.0.1"}}}, "delivery.routes"),
    ({"delivery": {"routes": {"example.com": "127.0.0.1:0"}}}, "delivery.routes"),
    ({"delivery": {"routes": {"not a domain": "127.0.0.1:25"}}}, "delivery.routes"),
    ({"delivery": {"routes": {"example.com": 25}}}, "delivery.routes"),
    ({"queue": {"min_backoff": 10, "max_backoff": 5}}, "queue.max_backoff"),
    ({"retention": {"batch_size": 0}}, "retention.batch_size"),
])
def test_bad_values_name_their_key(data: dict[str, Any], key: str) -> None:
    assert error(data).startswith(key), (data, key)


def test_good_values_are_normalised() -> None:
    cfg = from_dict({
        "hostname": "MX.Example.COM.",
        "mx": {"listen": "0.0.0.0:25"},
        "submission": {"listen": ["[::]:587", "127.0.0.1:2587"], "listen_tls": []},
        "dns": {"nameservers": ["127.0.0.1:5353", "[::1]:53"]},
        "delivery": {"routes": {"Bücher.Example.": "[::1]:2526", "*": "smarthost.example.net:25"}},
        "srs": {"domain": "SRS.Example.com"},
    })
    assert cfg.mx.listen == ("0.0.0.0:25",)
    assert cfg.submission.listen == ("[::]:587", "127.0.0.1:2587") and cfg.submission.listen_tls == ()
    assert cfg.server_hostname == "mx.example.com"
    assert cfg.srs_domain == "srs.example.com"
    assert cfg.delivery.routes == {"xn--bcher-kva.example": "[::1]:2526", "*": "smarthost.example.net:25"}
    assert config.parse_host_port("[::1]:2526") == ("::1", 2526)
    assert config.parse_host_port("smarthost.example.net:25") == ("smarthost.example.net", 25)


def test_srs_domain_defaults_to_hostname() -> None:
    assert from_dict({"hostname": "mx.example.com"}).srs_domain == "mx.example.com"


def test_tls_pair_both_or_neither() -> None:
    cfg = from_dict({"tls": {"cert": "/etc/c.pem", "key": "/etc/k.pem"}})
    assert cfg.cert_path == Path("/etc/c.pem") and cfg.key_path == Path("/etc/k.pem")
    assert error({"tls": {"key": "/etc/k.pem"}}).startswith("tls:")


def test_as_dict_masks_the_secret_and_is_json() -> None:
    cfg = from_dict({"srs": {"secret": "s3cret-value"}, "hostname": "mx.example.com"})
    data = config.as_dict(cfg)
    assert data["srs"]["secret"] == "********"
    assert "s3cret-value" not in json.dumps(data)
    assert data["hostname"] == "mx.example.com"
    assert data["mx"]["listen"] == ["127.0.0.1:2525"]


# ------------------------------------------------------------------ files


def test_load_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.toml"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("mx = [\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'hostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(latin)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "fwdmail.toml").write_text('data_dir = "data"\n[tls]\ncert = "c.pem"\nkey = "/abs/k.pem"\n')
    cfg = load(sub / "fwdmail.toml")
    assert cfg.data_path == sub / "data"
    assert cfg.cert_path == sub / "c.pem" and cfg.key_path == Path("/abs/k.pem")
    (sub / "empty.toml").write_text("")
    assert load(sub / "empty.toml").data_path == sub / "fwdmail-data"
    assert load(None).data_dir == "./fwdmail-data"


# ------------------------------------------------------------------ the CLI side


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('hostname = "mx.example.com"\n[mx]\nmax_recipients = 7\n[srs]\nsecret = "hush"\n')
    result = run("--config", str(path), "check-config", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == config.as_dict(load(path))
    assert data["mx"]["max_recipients"] == 7 and data["srs"]["secret"] == "********"
    table = run("--config", str(path), "check-config")
    assert table.exit_code == 0
    assert "mx.max_recipients" in table.output and "hush" not in table.output
    assert "valid" in table.output


def test_config_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[queue]\nconcurrency = 3\n")
    result = run("check-config", "--json", env={"FWDMAIL_CONFIG": str(path)})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["queue"]["concurrency"] == 3  # stderr may warn about the hostname
    # --config wins over the environment
    other = tmp_path / "other.toml"
    other.write_text("[queue]\nconcurrency = 4\n")
    result = run("--config", str(other), "check-config", "--json", env={"FWDMAIL_CONFIG": str(path)})
    assert json.loads(result.stdout)["queue"]["concurrency"] == 4


@pytest.mark.parametrize("content,needle", [
    ("[mx]\nmax_recipients = -3\n", "mx.max_recipients"),
    ("bogus = 1\n", "bogus: unknown key"),
    ("[delivery]\nport = 'x'\n", "delivery.port: must be an integer"),
    ("[mx\n", "invalid TOML"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    for args in (["check-config"], ["account", "list"], ["init"]):
        result = run("--config", str(path), *args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "fwdmail-data").exists()


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "nope.toml"), "check-config")
    assert result.exit_code == 2
    assert "cannot read config file" in result.output


# ------------------------------------------------------------------ upper bounds


@pytest.mark.parametrize("path", FLOATS, ids=".".join)
def test_durations_stop_at_a_year(path: tuple[str, ...]) -> None:
    """A duration past a year is a typo; far past it, `now + duration` overflows in the queue or purge."""
    if path == ("store", "write_lock_timeout"):  # clients wait that long for a reply: a minute at most
        assert from_dict(nested(path, 60))
        assert error(nested(path, 61)) == ("store.write_lock_timeout: must be at most 60 (clients wait that "
                                           "long for a reply; keep it short), got 61.0")
        return
    year = nested(path, config.MAX_SECONDS)
    if path == ("queue", "min_backoff"):
        year["queue"]["max_backoff"] = config.MAX_SECONDS
    assert from_dict(year)  # a year itself is fine
    message = error(nested(path, 1e20))
    assert message == f"{'.'.join(path)}: must be at most 31536000 (a year, in seconds), got 1e+20"


@pytest.mark.parametrize("path", [p for p, tp in all_keys() if tp is int], ids=".".join)
def test_integers_stop_at_a_c_int(path: tuple[str, ...]) -> None:
    """SQLite LIMITs and the like take these; 2**63 would be an OverflowError at run time."""
    assert error(nested(path, 2**63)).startswith(f"{'.'.join(path)}: must be at most")


@pytest.mark.parametrize("data,message", [
    ({"retention": {"error_log_days": 8}},
     "retention.error_log_days: must be at most 7 (the privacy promise; shorter is fine), got 8"),
    ({"retention": {"outbound_record_days": 31}},
     "retention.outbound_record_days: must be at most 30 (the privacy promise; shorter is fine), got 31"),
    ({"submission": {"max_future_date_days": 366}},
     "submission.max_future_date_days: must be at most 365 (a year), got 366"),
])
def test_day_counts_have_their_limits(data: dict[str, Any], message: str) -> None:
    assert error(data) == message
    edge = {table: {key: value - 1 for key, value in keys.items()} for table, keys in data.items()}
    assert from_dict(edge)



@pytest.mark.parametrize("routes", [
    {"Example.COM.": "127.0.0.1:25", "example.com": "127.0.0.1:26"},
    {"bücher.example": "127.0.0.1:25", "xn--bcher-kva.example": "127.0.0.1:26"},
])
def test_two_routes_for_one_domain_are_refused(routes: dict[str, str]) -> None:
    """Both spellings normalise to one key: silently keeping the last one would route to the wrong host."""
    first, second = routes
    assert error({"delivery": {"routes": routes}}) == (
        f"delivery.routes: {first!r} and {second!r} are the same domain; keep one")


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_config_path_is_named_as_such(tmp_path: Path, value: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # "" used to be read as the working directory: "... .: Is a directory"
    result = run("--config", value, "check-config")
    assert result.exit_code == 2
    assert result.output == (
        "Error: --config: empty path (leave it out, and FWDMAIL_CONFIG unset, for the defaults)\n")
    assert not (tmp_path / "fwdmail-data").exists()


def test_check_config_checks_a_configured_tls_pair_without_creating_anything(tmp_path: Path) -> None:
    """A cert path that `serve` cannot load must not pass check-config as "valid"."""
    from tests.support.tls import server_cert_files

    path = tmp_path / "c.toml"
    path.write_text('data_dir = "data"\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n')
    missing = run("--config", str(path), "check-config")
    assert missing.exit_code == 2
    assert missing.output == (
        f"Error: tls.cert: cannot read {tmp_path / 'cert.pem'}: No such file or directory\n")
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    broken = run("--config", str(path), "check-config", "--json")
    assert broken.exit_code == 2 and "are not a PEM certificate chain and its key" in broken.output
    cert, key = server_cert_files(tmp_path / "pki")
    path.write_text(f'data_dir = "data"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    good = run("--config", str(path), "check-config", "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["tls"] == {"cert": str(cert), "key": str(key)}
    assert not (tmp_path / "data").exists()

"""dlba/config: defaults, path resolution, and every bad value named by file, key and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlba.config import (
    Config,
    ConfigError,
    ConfigErrors,
    HostPort,
    load_config,
    parse_config,
    parse_host_port,
)
from dlba.node import node_main

FILES = ("cluster.key", "node.pem", "node.key", "admin.token")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    for name in FILES:
        (tmp_path / "certs" / name).write_text("00ff\n")
    return tmp_path


SECTIONS = {
    "cluster": '[cluster]\nsecret_file = "certs/cluster.key"\n',
    "nodes": '[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\n',
    "tls": '[tls]\ncert = "certs/node.pem"\nkey = "certs/node.key"\n',
    "persistence": '[persistence]\ncookie = "DLBASERVER"\n',
    "scheduling": '[scheduling]\npolicy = "least_conn"\n',
    "backends": '[[backends]]\nid = 1\naddress = "10.0.1.101:8080"\n',
    "admin": '[admin]\nlisten = ":9000"\ntoken_file = "certs/admin.token"\n',
    "proxy": "[proxy]\nheader_timeout_s = 5\n",
}


def config_text(**replace: str) -> str:
    """The minimal valid config, with some sections' text replaced."""
    return "\n".join(replace.get(name, text) for name, text in SECTIONS.items())


def parse(folder: Path, text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, folder / "dlba.toml")


def error(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(folder, text)
    e = info.value
    assert all(p.file == str(folder / "dlba.toml") for p in e.problems)
    # one line per problem; the first one's fields are the error's own
    assert str(e).splitlines() == [f"{p.file}: {p.key}: {p.reason}" for p in e.problems]
    assert (e.file, e.key, e.reason) == (e.problems[0].file, e.problems[0].key,
                                         e.problems[0].reason)
    return e


# --- defaults -----------------------------------------------------------------------------------
def test_minimal_config_and_its_defaults(folder: Path) -> None:
    cfg = parse(folder, config_text())
    assert cfg.cluster.vip is None and cfg.cluster.buckets == 4096
    node = cfg.node("n1")
    assert node.weight == 100
    assert node.listen == () and node.listen_tls == ()  # standalone, no VIP: nothing implied
    assert cfg.scheduling.policy == "least_conn"
    assert cfg.persistence.session_cookies == ("JSESSIONID", "PHPSESSID", "sessionid")
    (b,) = cfg.backends
    assert (b.id, b.address, b.weight, b.enabled, b.agent) == (
        1, HostPort("10.0.1.101", 8080), 100, True, None)
    assert cfg.proxy.header_timeout_s == 5.0 and cfg.proxy.max_headers == 100
    assert cfg.proxy.max_header_line == 8192


def test_listen_defaults_to_vip_ports_and_empty_list_turns_off(folder: Path) -> None:
    cluster = '[cluster]\nvip = "198.18.0.100"\nsecret_file = "certs/cluster.key"\n'
    cfg = parse(folder, config_text(cluster=cluster))
    node = cfg.node("n1")
    assert node.listen == (HostPort("198.18.0.100", 80),)
    assert node.listen_tls == (HostPort("198.18.0.100", 443),)

    nodes = SECTIONS["nodes"] + "listen = []\n"
    node = parse(folder, config_text(cluster=cluster, nodes=nodes)).node("n1")
    assert node.listen == () and node.listen_tls == (HostPort("198.18.0.100", 443),)

    nodes = SECTIONS["nodes"] + 'listen = [":8080"]\nlisten_tls = []\n'
    node = parse(folder, config_text(cluster=cluster, nodes=nodes)).node("n1")
    assert node.listen == (HostPort("198.18.0.100", 8080),) and node.listen_tls == ()


def test_relative_paths_are_resolved_against_the_config_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # not the config's folder
    cfg = parse(folder, config_text())
    assert cfg.cluster.secret_file == folder / "certs" / "cluster.key"
    assert cfg.tls.cert == folder / "certs" / "node.pem"
    assert cfg.tls.key == folder / "certs" / "node.key"
    assert cfg.admin.token_file == folder / "certs" / "admin.token"
    assert cfg.read_secret() == b"\x00\xff"
    absolute = f'[tls]\ncert = "{folder / "certs" / "node.pem"}"\nkey = "certs/node.key"\n'
    assert parse(folder, config_text(tls=absolute)).tls.cert == folder / "certs" / "node.pem"


def test_missing_relative_file_is_reported_with_resolved_path(folder: Path) -> None:
    e = error(folder, config_text(tls='[tls]\ncert = "certs/nope.pem"\nkey = "certs/node.key"\n'))
    assert e.key == "tls.cert"
    assert str(folder / "certs" / "nope.pem") in e.reason


# --- bad values -----------------------------------------------------------------------------------
BAD = [
    # (section, replacement text, key, words of the reason)
    ("cluster", '[cluster]\nvip = "198.18.0"\n', "cluster.vip", "IPv4"),
    ("cluster", "[cluster]\nbuckets = 0\n", "cluster.buckets", "> 0"),
    ("cluster", "[cluster]\nbuckets = true\n", "cluster.buckets", "expected int"),
    ("cluster", '[cluster]\ndeny = ["10.0.0.0/33"]\n', "cluster.deny", "10.0.0.0/33"),
    ("cluster", '[cluster]\nredis = "http://x"\n', "cluster.redis", "redis"),
    ("cluster", '[cluster]\ndefault_node = "n5"\n', "cluster.default_node", "n5"),
    ("cluster", "cluster = 3\n", "cluster", "expected a table"),
    ("nodes", '[[nodes]]\nname = "n1"\n', "nodes[0].address", "missing"),
    ("nodes", '[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\nlisten = ["10.0.0.11"]\n',
     "nodes[0].listen", "host:port"),
    ("nodes", '[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\nlisten = ["10.0.0.11:0"]\n',
     "nodes[0].listen", "bad port"),
    ("nodes", '[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\nlisten_tls = "10.0.0.11:443"\n',
     "nodes[0].listen_tls", "list"),
    ("nodes", '[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\n'
     '[[nodes]]\nname = "n1"\naddress = "10.0.0.12"\n', "nodes[1].name", "duplicate"),
    ("nodes", "", "nodes", "at least one"),
    ("tls", '[tls]\ncert = "certs/node.pem"\nkey = 5\n', "tls.key", "expected str"),
    ("persistence", '[persistence]\ncookie = "bad cookie"\n', "persistence.cookie", "cookie"),
    ("scheduling", '[scheduling]\npolicy = "fastest"\n', "scheduling.policy", "fastest"),
    ("backends", '[[backends]]\nid = 0\naddress = "10.0.1.101:8080"\n', "backends[0].id",
     "positive"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.101:65536"\n', "backends[0].address",
     "bad port"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.101:http"\n', "backends[0].address",
     "bad port"),
    ("backends", '[[backends]]\nid = 1\naddress = "bad host!:80"\n', "backends[0].address",
     "bad host"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.300:8080"\n', "backends[0].address",
     "bad host"),
    ("backends", '[[backends]]\nid = 1\naddress = "web..example:8080"\n', "backends[0].address",
     "bad host"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.1:80"\nenabled = "yes"\n',
     "backends[0].enabled", "expected bool"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.1:80"\nhealth = "health"\n',
     "backends[0].health", "/"),
    ("backends", '[[backends]]\nid = 1\naddress = "10.0.1.1:80"\n'
     '[[backends]]\nid = 1\naddress = "10.0.1.2:80"\n', "backends[1].id", "duplicate"),
    ("backends", "[backends]\nid = 1\n", "backends", "array of tables"),
    ("admin", '[admin]\nlisten = "localhost"\ntoken_file = "certs/admin.token"\n',
     "admin.listen", "host:port"),
    ("proxy", "[proxy]\nheader_timeout_s = 0\n", "proxy.header_timeout_s", "> 0"),
    ("proxy", "[proxy]\nheader_timeout_s = nan\n", "proxy.header_timeout_s", "> 0"),
    ("proxy", "[proxy]\nkeepalive_timeout_s = inf\n", "proxy.keepalive_timeout_s", ""),
    ("proxy", "[proxy]\nmax_headers = 1.5\n", "proxy.max_headers", "expected int"),
    ("proxy", '[proxy]\ntrusted_proxies = ["localhost"]\n', "proxy.trusted_proxies",
     "localhost"),
]


@pytest.mark.parametrize(("section", "text", "key", "reason"), BAD,
                         ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_value_names_key_and_reason(
    folder: Path, section: str, text: str, key: str, reason: str
) -> None:
    e = error(folder, config_text(**{section: text}))
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)


# --- every problem at once ---------------------------------------------------------------------
def test_three_problems_are_all_reported_with_file_key_and_reason(folder: Path) -> None:
    text = config_text(
        scheduling='[scheduling]\npolicy = "fastest"\n',
        backends='[[backends]]\nid = 0\naddress = "10.0.1.101:8080"\n',
        proxy="[proxy]\nheader_timeout_s = 5\nretries = 3\n",
    )
    with pytest.raises(ConfigErrors) as info:
        parse(folder, text)
    e = info.value
    file = str(folder / "dlba.toml")
    assert [(p.file, p.key) for p in e.problems] == [
        (file, "scheduling.policy"), (file, "backends[0].id"), (file, "proxy.retries")]
    assert [p.reason for p in e.problems] == [
        "expected one of least_conn, weighted_rr, response_time, url_hash, p2c, got 'fastest'",
        "must be a positive integer", "unknown key"]
    # one line each, `file: key: reason`; the first one's fields for callers of ConfigError
    assert str(e).splitlines() == e.lines() == [f"{file}: {p.key}: {p.reason}"
                                                 for p in e.problems]
    assert isinstance(e, ConfigError) and (e.key, e.reason) == ("scheduling.policy",
                                                                e.problems[0].reason)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picked=st.lists(st.sampled_from(BAD), min_size=1, max_size=6,
                       unique_by=lambda b: b[0]))
def test_any_set_of_bad_sections_reports_each_once(
    folder: Path, picked: list[tuple[str, str, str, str]]
) -> None:
    e = error(folder, config_text(**{section: text for section, text, _, _ in picked}))
    got = [(p.key, p.reason) for p in e.problems]
    for _, _, key, reason in picked:
        assert any(k == key and reason in r for k, r in got), (key, got)
    # nothing reported twice, and no knock-on problem from a value already reported bad
    assert len(got) == len(set(got)) == len(picked), got


def test_a_bad_entry_does_not_cascade(folder: Path) -> None:
    cluster = SECTIONS["cluster"] + 'default_node = "n1"\n'
    nodes = '[[nodes]]\nname = "n1"\n[[nodes]]\nname = "n2"\naddress = "10.0.0.1"\n'
    e = error(folder, config_text(cluster=cluster, nodes=nodes))
    # n1 has no address: that only, not also "no node named n1" for default_node
    assert [(p.key, p.reason) for p in e.problems] == [("nodes[0].address", "missing")]


def test_files_are_the_nodes_business_when_asked(folder: Path, tmp_path_factory:
                                                 pytest.TempPathFactory) -> None:
    copy = tmp_path_factory.mktemp("elsewhere") / "dlba.toml"  # no certs/ next to it
    text = config_text(tls='[tls]\ncert = "certs/node.pem"\nkey = "certs/node.key"\n'
                       '[[tls.sni]]\nnames = ["a.test"]\ncert = "certs/a.pem"\n'
                       'key = "certs/a.key"\n')
    cfg = parse_config(text, copy, check_files=False)
    assert cfg.tls.sni[0].cert == copy.parent / "certs" / "a.pem"
    assert [k for k, _ in cfg.files()] == [
        "cluster.secret_file", "tls.cert", "tls.key", "admin.token_file",
        "tls.sni[0].cert", "tls.sni[0].key"]
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, copy)
    assert [p.key for p in info.value.problems] == [k for k, _ in cfg.files()]
    assert all(p.reason.startswith("file not found: " + str(copy.parent))
               for p in info.value.problems)
    (folder / "certs" / "admin.token").write_text("  \n")
    copy.write_text(text)
    e = error(folder, text)
    assert [(p.key, p.reason) for p in e.problems] == [
        ("admin.token_file", f"{folder / 'certs' / 'admin.token'} is empty"),
        ("tls.sni[0].cert", f"file not found: {folder / 'certs' / 'a.pem'}"),
        ("tls.sni[0].key", f"file not found: {folder / 'certs' / 'a.key'}")]
    assert isinstance(load_config(copy, check_files=False), Config)


def test_a_node_refuses_to_start_listing_every_problem(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = folder / "dlba.toml"
    path.write_text(config_text(
        scheduling='[scheduling]\npolicy = "fastest"\n',
        tls='[tls]\ncert = "certs/gone.pem"\nkey = "certs/node.key"\n',
        proxy="[proxy]\nworkers = 0\n",
    ))
    assert node_main(["--config", str(path), "--name", "n1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"dlba: config error: {path}: scheduling.policy: expected one of least_conn, "
        "weighted_rr, response_time, url_hash, p2c, got 'fastest'",
        f"dlba: config error: {path}: proxy.workers: must be > 0 and finite",
        f"dlba: config error: {path}: tls.cert: file not found: {folder / 'certs' / 'gone.pem'}",
    ]
    # a name the config does not know is one more problem, not a different kind of exit
    path.write_text(config_text(admin='[admin]\nlisten = ":9000"\n', tls=""))
    assert node_main(["--config", str(path), "--name", "n9"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dlba: config error: {path}: admin.token_file: not set",
        f"dlba: config error: {path}: nodes: no node named 'n9'",
    ]


def test_not_toml(folder: Path) -> None:
    e = error(folder, "[cluster\nvip=")
    assert "not valid TOML" in e.reason


def test_pinned_port_rule_must_name_a_node(folder: Path) -> None:
    ok = config_text() + '\n[[ports]]\nport = 443\nrule = "node:n1"\n'
    assert parse(folder, ok).ports[0].pinned_node == "n1"
    e = error(folder, config_text() + '\n[[ports]]\nport = 443\nrule = "node:n2"\n')
    assert (e.key, "n2" in e.reason) == ("ports[0].rule", True)
    e = error(folder, config_text() + '\n[[ports]]\nport = 443\nrule = "sometimes"\n')
    assert e.key == "ports[0].rule"


def test_listen_tls_needs_a_certificate(folder: Path) -> None:
    nodes = SECTIONS["nodes"] + 'listen_tls = ["127.0.0.1:8443"]\n'
    e = error(folder, config_text(nodes=nodes, tls=""))
    assert e.key == "tls.cert"


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:80", HostPort("127.0.0.1", 80)),
    (":9000", HostPort("0.0.0.0", 9000)),
    ("[::1]:443", HostPort("::1", 443)),
    ("web-1.example.org:8080", HostPort("web-1.example.org", 8080)),
    ("localhost:1", HostPort("localhost", 1)),
])
def test_parse_host_port_accepts(text: str, want: HostPort) -> None:
    assert parse_host_port(text) == want


@pytest.mark.parametrize("text", [
    "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "[::1]443",
    "256.1.1.1:80", "1.2.3:80", "-web:80", "web-:80", "a..b:80", "bad_host:80", "x y:80",
    "ünï:80",
])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


# --- hypothesis: any junk key, anywhere, is rejected by name ------------------------------------
KNOWN = {
    "": {"cluster", "ports", "nodes", "tls", "persistence", "scheduling", "backends", "admin",
         "proxy", "pools", "services", "classes"},
    "cluster": {"vip", "buckets", "bucket_idle_s", "redis", "secret_file", "deny",
                "default_node", "ping_interval_s", "ping_failures", "sweep_interval_s",
                "sweep_retries"},
    "nodes": {"name", "address", "weight", "listen", "listen_tls", "admin"},
    "tls": {"cert", "key", "sni", "hsts", "hsts_max_age_s"},
    "persistence": {"cookie", "session_cookies", "url_session_params", "same_site",
                    "learned_ttl_s", "learned_max"},
    "scheduling": {"policy", "url_hash_paths"},
    "backends": {"id", "address", "weight", "enabled", "agent", "health", "pool", "maxconn"},
    "admin": {"listen", "token_file"},
    "proxy": {"header_timeout_s", "keepalive_timeout_s", "connect_timeout_s",
              "backend_timeout_s", "max_header_line", "max_headers", "pool_size",
              "fail_threshold", "retry_backoff_s", "retry_backoff_max_s", "health_interval_s",
              "agent_interval_s", "trusted_proxies", "workers", "redirect_https"},
}
junk_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True)
junk_values = st.sampled_from(["1", '"x"', "true", "[]", "1.5", '["a"]', "{}"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(sorted(KNOWN)), key=junk_keys, value=junk_values)
def test_any_unknown_key_is_rejected_by_name(
    folder: Path, section: str, key: str, value: str
) -> None:
    if key in KNOWN[section]:
        return
    line = f"{key} = {value}\n"
    if section == "":
        text = line + config_text()
        want = key
    else:
        prefix = "[[" + section + "]]" if section in ("nodes", "backends") else f"[{section}]"
        text = config_text(**{section: SECTIONS[section].replace(prefix + "\n",
                                                                  prefix + "\n" + line)})
        want = f"{section}[0].{key}" if section in ("nodes", "backends") else f"{section}.{key}"
    e = error(folder, text)
    assert e.key == want, str(e)
    assert e.reason == "unknown key", str(e)


def test_every_known_key_is_accepted(folder: Path) -> None:
    # The other side of the property: the known keys above really are keys of the config.
    text = config_text(
        cluster='[cluster]\nvip = "198.18.0.100"\nbuckets = 8\nbucket_idle_s = 1\nredis = ""\n'
        'secret_file = "certs/cluster.key"\ndeny = ["10.9.0.0/16"]\ndefault_node = "n1"\n'
        "ping_interval_s = 1\nping_failures = 1\nsweep_interval_s = 1\nsweep_retries = 1\n",
        nodes='[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\nweight = 5\nlisten = [":80"]\n'
        'listen_tls = [":443"]\nadmin = ":9001"\n',
        tls='[tls]\ncert = "certs/node.pem"\nkey = "certs/node.key"\nhsts = false\n'
        'hsts_max_age_s = 60\n[[tls.sni]]\n'
        'names = ["a.test"]\ncert = "certs/node.pem"\nkey = "certs/node.key"\n',
        persistence='[persistence]\ncookie = "C"\nsession_cookies = ["S"]\n'
        'url_session_params = ["sid"]\nsame_site = "Strict"\nlearned_ttl_s = 60\n'
        'learned_max = 10\n',
        scheduling='[scheduling]\npolicy = "url_hash"\nurl_hash_paths = ["/static/"]\n',
        backends='[[backends]]\nid = 1\naddress = "10.0.1.101:8080"\nweight = 5\n'
        'enabled = false\nagent = ":7777"\nhealth = "/health"\n',
        admin='[admin]\nlisten = ":9000"\ntoken_file = "certs/admin.token"\n',
        proxy="[proxy]\n" + "".join(
            f"{k} = 1\n" for k in sorted(KNOWN["proxy"])
            if k not in ("trusted_proxies", "redirect_https")
        ) + 'trusted_proxies = ["10.0.0.0/8"]\nredirect_https = ["127.0.0.1:80"]\n',
    )
    cfg = parse(folder, text)
    assert cfg.backends[0].agent == HostPort("10.0.1.101", 7777)
    assert cfg.node("n1").admin == HostPort("10.0.0.11", 9001)
    assert cfg.tls.sni[0].names == ("a.test",)
    assert (cfg.tls.hsts, cfg.tls.hsts_max_age_s) == (False, 60)
    assert (cfg.persistence.same_site, cfg.persistence.learned_max) == ("Strict", 10)
    assert cfg.proxy.redirect_https == ("127.0.0.1:80",)
    assert re.fullmatch(r"[\d.]+", cfg.node("n1").address)

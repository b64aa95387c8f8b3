"""Sections, defaults and error messages of a single config file."""

# JSON snippets are built with %-formatting: their braces would need doubling for str.format.
# ruff: noqa: UP031

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from raybridge.config import (
    BlackholeSettings,
    Config,
    ConfigError,
    DokodemoSettings,
    FreedomSettings,
    HttpInboundSettings,
    LevelPolicy,
    LogConfig,
    MuxConfig,
    SocksInboundSettings,
    VMessInboundSettings,
    VMessOutboundSettings,
    load_config_text,
    register_section,
)
from raybridge.config.build import _EXTRA_SECTIONS
from raybridge.config.fields import Obj

UUID1 = "b831381d-6324-4d53-ad4f-8cda48b30811"


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "t.json", environ=env or {})


def error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return info.value


def inbound(body: str) -> str:
    return '{"inbounds": [{"protocol": "socks", "port": 1080, %s}]}' % body


def outbound(body: str) -> str:
    return '{"outbounds": [{%s}]}' % body


def vmess_out(user: str) -> str:
    return outbound(
        '"protocol": "vmess", "settings": {"vnext": [{"address": "example.com", "port": 443,'
        ' "users": [%s]}]}' % user
    )


def messages(cfg: Config) -> list[str]:
    return [w.message for w in cfg.warnings]


# --------------------------------------------------------------------------- defaults


def test_empty_config_defaults() -> None:
    cfg = load("{}")
    assert cfg.inbounds == [] and cfg.outbounds == []
    assert cfg.log == LogConfig(access=None, error="", level="warning")
    assert cfg.routing.domain_strategy == "AsIs" and cfg.routing.rules == []
    assert cfg.reverse.bridges == [] and cfg.reverse.portals == []
    assert cfg.policy.level(0) == LevelPolicy(
        handshake=60, conn_idle=300, uplink_only=None, downlink_only=None, buffer_size=512 * 1024
    )
    assert cfg.files == ["t.json"] and cfg.warnings == []


def test_null_top_level_is_an_empty_config() -> None:
    assert load("null").inbounds == []


def test_inbound_defaults() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "socks", "port": 1080}, {"protocol": "http", "port": 3128}]}'
    )
    socks, http = cfg.inbounds
    assert socks.listen == "0.0.0.0" and socks.tag == "" and socks.ports == [1080]
    assert socks.settings == SocksInboundSettings(
        auth="noauth", accounts={}, udp=False, ip=None, user_level=0
    )
    assert not socks.sniffing_enabled
    assert http.settings == HttpInboundSettings(accounts={}, allow_transparent=False, timeout=0)
    assert (socks.index, http.index) == (0, 1)
    assert (socks.path, http.path) == ("inbounds[0]", "inbounds[1]")


def test_outbound_defaults() -> None:
    cfg = load(outbound('"protocol": "freedom"'))
    out = cfg.outbounds[0]
    assert out.settings == FreedomSettings(domain_strategy="AsIs", redirect=None, user_level=0)
    assert out.mux == MuxConfig(enabled=False, concurrency=8)
    assert out.send_through is None and out.proxy_tag is None and out.tag == ""
    assert load(outbound('"protocol": "blackhole"')).outbounds[0].settings == BlackholeSettings(
        response="none"
    )


def test_every_object_remembers_file_and_line() -> None:
    cfg = load(
        """\
        {
          "inbounds": [
            {"protocol": "vmess", "port": 1,
             "settings": {"clients": [
               {"id": "%s"}
             ]}}
          ],
          "outbounds": [
            {"protocol": "freedom"}
          ],
          "routing": {"rules": [
            {"type": "field", "port": 53, "outboundTag": "x"}
          ]}
        }
        """
        % UUID1
    )
    ib = cfg.inbounds[0]
    assert (ib.file, ib.line) == ("t.json", 3)
    assert isinstance(ib.settings, VMessInboundSettings)
    assert ib.settings.clients[0].line == 5
    assert cfg.outbounds[0].line == 9
    assert (cfg.routing.rules[0].line, cfg.routing.line) == (12, 11)


# --------------------------------------------------------------------------- errors with positions


def test_missing_protocol_names_the_object_line() -> None:
    err = error(
        """\
        {
          "inbounds": [
            {"protocol": "socks", "port": 1},
            {
              "tag": "x",
              "port": 2
            }
          ]
        }
        """
    )
    assert str(err) == 't.json:4: inbounds[1]: "protocol" is missing'
    assert (err.file, err.line, err.path) == ("t.json", 4, "inbounds[1]")


def test_bad_port_names_the_value_line() -> None:
    err = error('{\n"inbounds": [\n{"protocol": "socks",\n "port":\n   "abc"}]}')
    assert str(err) == 't.json:5: inbounds[0].port: "abc" is not a port'


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ('"abc"', '"abc" is not a port'),
        ("70000", "70000 is not a port"),
        ("-1", "-1 is not a port"),
        ("80.0", "80.0 is not a port"),
        ("8e1", "8e1 is not a port"),
        ('"80.0"', '"80.0" is not a port'),
        ('" 80"', '" 80" is not a port'),
        ('"+80"', '"+80" is not a port'),
        ('""', '"" is not a port'),
        ('"1-x"', '"1-x" is not a port range'),
        ('"1-2-3"', '"1-2-3" is not a port range'),
        ('"2000-1000"', '"2000-1000" is not a valid port range (2000 > 1000)'),
        ("true", "true is not a port"),
        ("[80]", "an array is not a port"),
    ],
)
def test_bad_inbound_ports(port: str, message: str) -> None:
    err = error(inbound('"listen": "127.0.0.1", "port": %s' % port).replace('"port": 1080, ', ""))
    assert err.path == "inbounds[0].port"
    assert err.message == message


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("80", [80]),
        ('"80"', [80]),
        ('"080"', [80]),
        ("0", [0]),
        ('"1000-1003"', [1000, 1001, 1002, 1003]),
        ('"7-7"', [7]),
    ],
)
def test_inbound_port_forms(port: str, expected: list[int]) -> None:
    cfg = load('{"inbounds": [{"protocol": "socks", "port": %s}]}' % port)
    assert cfg.inbounds[0].ports == expected


def test_env_ports() -> None:
    text = '{"inbounds": [{"protocol": "socks", "port": "env:PORT"}]}'
    assert load(text, {"PORT": "1234"}).inbounds[0].ports == [1234]
    assert load(text, {"PORT": "10-12"}).inbounds[0].ports == [10, 11, 12]
    err = error(text, {"PORT": "x"})
    assert err.message == '"env:PORT" (= "x") is not a port'
    err = error(text, {})
    assert err.message == '"env:PORT": environment variable PORT is not set'


def test_missing_port() -> None:
    err = error('{"inbounds": [{"protocol": "http", "listen": "127.0.0.1"}]}')
    assert err.message == '"port" is missing'


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("shadowsocks", 'protocol "shadowsocks" is not supported by raybridge'),
        ("VLESS", 'protocol "vless" is not supported by raybridge'),
        ("trojan", 'protocol "trojan" is not supported by raybridge'),
        ("mtproto", 'protocol "mtproto" is not supported by raybridge'),
        ("nonsense", 'unknown protocol "nonsense" for an inbound'),
        ("freedom", 'unknown protocol "freedom" for an inbound (it is an outbound protocol)'),
    ],
)
def test_inbound_protocols_not_supported(protocol: str, message: str) -> None:
    err = error('{\n"inbounds": [{"port": 1,\n"protocol": "%s"}]}' % protocol)
    assert (err.line, err.path, err.message) == (3, "inbounds[0].protocol", message)


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("socks", 'protocol "socks" is not supported by raybridge'),
        ("http", 'protocol "http" is not supported by raybridge'),
        ("dns", 'protocol "dns" is not supported by raybridge'),
        ("shadowsocks", 'protocol "shadowsocks" is not supported by raybridge'),
        (
            "dokodemo-door",
            'unknown protocol "dokodemo-door" for an outbound (it is an inbound protocol)',
        ),
        ("", 'unknown protocol "" for an outbound'),
    ],
)
def test_outbound_protocols_not_supported(protocol: str, message: str) -> None:
    err = error(outbound('"protocol": "%s"' % protocol))
    assert (err.path, err.message) == ("outbounds[0].protocol", message)


def test_protocol_names_are_case_insensitive() -> None:
    cfg = load('{"outbounds": [{"protocol": "Freedom"}, {"protocol": "BLACKHOLE"}]}')
    assert [o.protocol for o in cfg.outbounds] == ["freedom", "blackhole"]


def test_type_errors() -> None:
    err = error(outbound('"protocol": "freedom", "tag": 5'))
    assert (err.path, err.message) == ("outbounds[0].tag", "expected a string, got the number 5")
    err = error('{"inbounds": {"protocol": "socks"}}')
    assert (err.path, err.message) == ("inbounds", "expected an array, got an object")
    err = error('{"inbounds": [5]}')
    assert (err.path, err.message) == ("inbounds[0]", "expected an object, got the number 5")
    err = error("[]")
    assert err.message == "expected an object at the top level, got an array"
    err = error(inbound('"settings": {"udp": "yes"}'))
    assert err.message == 'expected true or false, got the string "yes"'


def test_case_insensitive_keys_everywhere() -> None:
    cfg = load(
        '{"INBOUNDS": [{"Protocol": "SOCKS", "PORT": 1,'
        ' "Settings": {"UDP": true, "Auth": "NoAuth"}}],'
        ' "Outbounds": [{"PROTOCOL": "freedom", "settings": {"DOMAINSTRATEGY": "UseIP"}}]}'
    )
    assert isinstance(cfg.inbounds[0].settings, SocksInboundSettings)
    assert cfg.inbounds[0].settings.udp is True
    assert cfg.outbounds[0].settings == FreedomSettings(domain_strategy="UseIP")
    assert cfg.warnings == []


def test_duplicate_keys_last_wins_with_warning() -> None:
    cfg = load('{"inbounds": [{"protocol": "socks", "port": 1, "Port": 2}]}')
    assert cfg.inbounds[0].ports == [2]
    assert messages(cfg) == ['duplicate key "port": the last one wins']


def test_unknown_keys_are_warnings() -> None:
    cfg = load(
        '{\n"inbounds": [{"protocol": "socks", "port": 1,\n "colour": "red",'
        ' "settings": {"udpp": true}}],\n "status": {}}'
    )
    assert [(w.line, w.path, w.message) for w in cfg.warnings] == [
        (3, "inbounds[0].settings", 'unknown key "udpp" is ignored'),
        (3, "inbounds[0]", 'unknown key "colour" is ignored'),
        (4, "top level", 'unknown key "status" is ignored'),
    ]
    assert str(cfg.warnings[0]) == 't.json:3: inbounds[0].settings: unknown key "udpp" is ignored'


# --------------------------------------------------------------------------- inbound settings


def test_socks_settings() -> None:
    cfg = load(
        inbound(
            '"settings": {"auth": "PASSWORD", "accounts": [{"user": "u", "pass": "p"},'
            ' {"user": "v", "pass": "q"}, {"user": "u", "pass": "r"}], "udp": true,'
            ' "ip": "127.0.0.1", "userLevel": 2, "timeout": 30}'
        )
    )
    assert cfg.inbounds[0].settings == SocksInboundSettings(
        auth="password",
        accounts={"u": "r", "v": "q"},
        udp=True,
        ip="127.0.0.1",
        user_level=2,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("auth", "suggestion"),
    [("passwd", 'did you mean "password"? '), ("no-auth", 'did you mean "noauth"? '), ("x", "")],
)
def test_socks_auth_must_be_spelled_right(auth: str, suggestion: str) -> None:
    err = error(inbound('"settings": {"auth": "%s"}' % auth))
    assert err.path == "inbounds[0].settings.auth"
    assert err.message == (
        f'"{auth}" is not a SOCKS auth method: {suggestion}write "noauth" or "password" '
        "(V2Ray would silently run without authentication)"
    )


@pytest.mark.parametrize(
    ("accounts", "path", "needle"),
    [
        ("", "auth", 'there are no "accounts": nobody could log in'),
        ('"accounts": []', "accounts", '"accounts" is empty: nobody could log in'),
        ('"acounts": [{"user": "u", "pass": "p"}]', "acounts", 'did you mean "accounts"?'),
        ('"Accounts": null', "auth", 'there are no "accounts"'),
    ],
)
def test_socks_password_without_accounts_is_an_error(accounts: str, path: str, needle: str) -> None:
    """V2Ray starts such an inbound and refuses everyone (05 FF); raybridge used to warn
    and then let every client in. Now the config is refused, naming file, line and field."""
    err = error(
        """\
        {"inbounds": [{"protocol": "socks", "port": 1080,
          "settings": {
            "auth": "password"%s
          }}]}
        """
        % ("" if not accounts else ",\n" + " " * 4 + accounts)
    )
    assert err.file == "t.json"
    assert err.path == f"inbounds[0].settings.{path}"
    assert err.line == (3 if path == "auth" else 4)
    assert needle in err.message


def test_socks_account_needs_a_user_name() -> None:
    err = error(
        inbound('"settings": {"auth": "password", "accounts": [{"user": "", "pass": "p"}]}')
    )
    assert err.path == "inbounds[0].settings.accounts[0].user"
    assert 'no "user" name' in err.message
    err = error(inbound('"settings": {"auth": "password", "accounts": [{"pass": "p"}]}'))
    assert err.path == "inbounds[0].settings.accounts[0].user"


def test_raybridge_state_dir() -> None:
    options = load('{"raybridge": {"stateDir": "/var/lib/raybridge"}}').sections["raybridge"]
    assert getattr(options, "state_dir", None) == "/var/lib/raybridge"
    assert getattr(load('{"raybridge": {}}').sections["raybridge"], "state_dir", "x") is None


def test_http_settings() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "http", "port": 1, "settings": {"timeout": 5,'
        ' "accounts": [{"user": "a", "pass": "b"}], "allowTransparent": true, "userLevel": 1}}]}'
    )
    assert cfg.inbounds[0].settings == HttpInboundSettings(
        accounts={"a": "b"}, allow_transparent=True, timeout=5, user_level=1
    )


def test_vmess_inbound() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "vmess", "port": 1, "settings": {"clients": ['
        '{"id": "%s", "alterId": 64, "level": 1, "email": "a@x", "security": "weird"},'
        '{"id": "B831381D63244D53AD4F8CDA48B30812"}],'
        ' "disableInsecureEncryption": true, "default": {"alterId": 4, "level": 0}}}]}' % UUID1
    )
    settings = cfg.inbounds[0].settings
    assert isinstance(settings, VMessInboundSettings)
    a, b = settings.clients
    assert a.id == uuid.UUID(UUID1) and a.alter_id == 64 and a.level == 1 and a.email == "a@x"
    assert a.security == "auto"  # ignored on the server, no warning there
    assert b.id == uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30812") and b.alter_id == 0
    assert settings.disable_insecure_encryption
    assert cfg.warnings == []


@pytest.mark.parametrize(
    ("user", "path", "message"),
    [
        ('{"id": "xyz"}', "id", '"xyz" is not a valid UUID'),
        (
            '{"id": "b831381d-6324-4d53-ad4f-8cda48b3081"}',
            "id",
            '"b831381d-6324-4d53-ad4f-8cda48b3081" is not a valid UUID',
        ),
        (
            '{"id": "g831381d-6324-4d53-ad4f-8cda48b30811"}',
            "id",
            '"g831381d-6324-4d53-ad4f-8cda48b30811" is not a valid UUID',
        ),
        (
            '{"id": "{b831381d-6324-4d53-ad4f-8cda48b30811}"}',
            "id",
            '"{b831381d-6324-4d53-ad4f-8cda48b30811}" is not a valid UUID',
        ),
        ('{"id": 5}', "id", "expected a string, got the number 5"),
        ('{"alterId": 0}', "", '"id" is missing'),
        (
            '{"id": "%s", "alterId": 65536}' % UUID1,
            "alterId",
            "expected an integer in 0..65535, got the number 65536",
        ),
        (
            '{"id": "%s", "alterId": -1}' % UUID1,
            "alterId",
            "expected an integer in 0..65535, got the number -1",
        ),
        (
            '{"id": "%s", "alterId": "64"}' % UUID1,
            "alterId",
            'expected an integer in 0..65535, got the string "64"',
        ),
    ],
)
def test_bad_vmess_users(user: str, path: str, message: str) -> None:
    err = error(vmess_out(user))
    base = "outbounds[0].settings.vnext[0].users[0]"
    assert err.path == (f"{base}.{path}" if path else base)
    assert err.message == message


def test_uuid_with_trailing_text_is_accepted_like_v2ray() -> None:
    cfg = load(vmess_out('{"id": "%s-extra"}' % UUID1))
    assert isinstance(cfg.outbounds[0].settings, VMessOutboundSettings)
    assert cfg.outbounds[0].settings.servers[0].users[0].id == uuid.UUID(UUID1)
    assert messages(cfg) == [f'"{UUID1}-extra": text after the UUID is ignored']


def test_duplicate_vmess_email_is_an_error() -> None:
    err = error(
        '{"inbounds": [{"protocol": "vmess", "port": 1, "settings": {"clients": ['
        '{"id": "%s", "email": "A@x"}, {"id": "%s", "email": "a@X"}]}}]}' % (UUID1, UUID1)
    )
    assert err.path == "inbounds[0].settings.clients[1]"
    assert err.message == 'email "a@X" is already used by clients[0]'


def test_vmess_detour() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "vmess", "port": 1, "settings": {"clients": [{"id": "%s"}],'
        ' "features": {"detour": {"to": "b"}}, "detour": {"to": "a"}, "default": {"alterId": 4}}}]}'
        % UUID1
    )
    settings = cfg.inbounds[0].settings
    assert isinstance(settings, VMessInboundSettings)
    assert (settings.detour_to, settings.default_alter_id) == ("a", 4)  # "detour" wins
    assert cfg.warnings == []
    err = error(
        '{"inbounds": [{"protocol": "vmess", "port": 1, "settings": {"detour": {"to": ""}}}]}'
    )
    assert err.path == "inbounds[0].settings.detour.to"


def test_dokodemo() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "dokodemo-door", "port": 80, "settings": {'
        '"address": "10.0.0.2", "port": 8080, "network": "tcp,udp", "timeout": 10}}]}'
    )
    assert cfg.inbounds[0].settings == DokodemoSettings(
        address="10.0.0.2", port=8080, networks=frozenset({"tcp", "udp"}), timeout=10
    )
    cfg = load(
        '{"inbounds": [{"protocol": "dokodemo-door", "port": 80,'
        ' "settings": {"followRedirect": true, "network": ["TCP"]}}]}'
    )
    assert cfg.inbounds[0].settings == DokodemoSettings(
        networks=frozenset({"tcp"}), follow_redirect=True
    )
    # Transparent UDP needs TPROXY (tests/test_transparent.py): without it, refused.
    err = error(
        '{"inbounds": [{"protocol": "dokodemo-door", "port": 80,'
        ' "settings": {"followRedirect": true, "network": ["UDP"]}}]}'
    )
    assert err.path == "inbounds[0].settings.followRedirect" and "needs TPROXY" in err.message


def test_dokodemo_network_quirks() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "dokodemo-door", "port": 80,'
        ' "settings": {"address": "1.2.3.4", "network": "tcp, udp"}}]}'
    )
    assert isinstance(cfg.inbounds[0].settings, DokodemoSettings)
    assert cfg.inbounds[0].settings.networks == {"tcp"}
    assert messages(cfg) == ['unknown network " udp" is ignored (no spaces: write "tcp,udp")']
    err = error(
        '{"inbounds": [{"protocol": "dokodemo-door", "port": 80,'
        ' "settings": {"address": "1.2.3.4", "network": []}}]}'
    )
    assert err.message == "no network specified"
    cfg = load('{"inbounds": [{"protocol": "dokodemo-door", "port": 80}]}')
    assert "every connection fails" in messages(cfg)[0]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        (" 10.0.0.1 ", "10.0.0.1"),
    ],
)
def test_listen_forms(listen: str, expected: str) -> None:
    cfg = load('{"inbounds": [{"protocol": "socks", "port": 1, "listen": "%s"}]}' % listen)
    assert cfg.inbounds[0].listen == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("/run/v2.sock", 'listening on a Unix domain socket ("/run/v2.sock") is not supported'),
        ("@abstract", 'listening on a Unix domain socket ("@abstract") is not supported'),
        ("example.com", 'cannot listen on "example.com": not an IP address'),
    ],
)
def test_listen_errors(listen: str, message: str) -> None:
    err = error('{"inbounds": [{"protocol": "socks", "port": 1, "listen": "%s"}]}' % listen)
    assert (err.path, err.message) == ("inbounds[0].listen", message)


def test_sniffing() -> None:
    cfg = load(inbound('"sniffing": {"enabled": true, "destOverride": ["http", "TLS", "ssl"]}'))
    assert cfg.inbounds[0].sniffing_enabled
    assert cfg.inbounds[0].sniffing_dest_override == {"http", "tls"}
    cfg = load(inbound('"domainOverride": "http,tls"'))
    assert cfg.inbounds[0].sniffing_enabled
    err = error(inbound('"sniffing": {"enabled": true, "destOverride": ["quic"]}'))
    assert err.message.startswith('unknown sniffing protocol "quic": V2Ray 4.34 overrides')


def test_allocate() -> None:
    assert load(inbound('"allocate": {"strategy": "always"}')).warnings == []
    assert "unknown allocation strategy" in error(inbound('"allocate": {"strategy": "x"}')).message
    err = error(inbound('"allocate": {"strategy": "external"}'))
    assert "V2Ray 4.34 refuses to start with it" in err.message


# --------------------------------------------------------------------------- streamSettings


@pytest.mark.parametrize(
    "stream",
    [
        "{}",
        '{"network": "tcp"}',
        '{"network": "TCP", "security": "none"}',
        '{"security": ""}',
        '{"tcpSettings": {"header": {"type": "none"}}}',
        '{"tlsSettings": {"serverName": "x"}}',  # read only with security "tls", as in V2Ray
        '{"sockopt": {"tproxy": "off", "mark": 0}}',
        '{"network": "ws", "wsSettings": {"path": "/ray", "headers": {"Host": "h"}}}',
        '{"network": "websocket", "wsSettings": {"Path": "ray"}}',
        '{"network": "h2", "httpSettings": {"host": "a,b", "path": "/h2"}}',
        '{"tcpSettings": {"header": {"type": "HTTP", "request": {"path": ["/a"]}}}}',
        '{"WSSETTINGS": {"PATH": "/up"}, "network": "ws"}',
    ],
)
def test_stream_settings_are_accepted(stream: str) -> None:
    cfg = load(inbound('"streamSettings": %s' % stream))
    assert cfg.warnings == []


def test_stream_settings_values() -> None:
    cfg = load(
        inbound(
            '"streamSettings": {"network": "ws", "wsSettings": {"Path": "ray",'
            ' "headers": {"Host": "example.test"}, "acceptProxyProtocol": true},'
            ' "httpSettings": {"host": "a, b"}}'
        )
    )
    stream = cfg.inbounds[0].stream
    assert stream.network == "ws" and stream.tls is None
    assert stream.ws.path == "/ray" and stream.ws.headers == {"Host": "example.test"}
    assert stream.ws.accept_proxy_protocol
    assert stream.http.hosts == ("a", " b")  # split on "," without trimming, as V2Ray
    assert stream.describe() == "ws"
    cfg = load(
        inbound(
            '"streamSettings": {"tcpSettings": {"header": {"type": "http", "request":'
            ' {"method": "POST", "path": "/a", "headers": {"Host": ["h1", "h2"]}}}}}'
        )
    )
    tcp = cfg.inbounds[0].stream.tcp
    assert (tcp.header, tcp.request.method, tcp.request.paths) == ("http", "POST", ("/a",))
    assert tcp.request.headers == {"Host": ("h1", "h2")}


@pytest.mark.parametrize(
    ("stream", "path", "message"),
    [
        ('{"network": "kcp"}', "network", 'mKCP ("kcp") is not supported by raybridge'),
        ('{"network": "quic"}', "network", 'QUIC ("quic") is not supported by raybridge'),
        (
            '{"network": "grpc"}',
            "network",
            'gRPC (not in V2Ray 4.34 either) ("grpc") is not supported by raybridge',
        ),
        ('{"network": "carrier-pigeon"}', "network", 'unknown network "carrier-pigeon"'),
        (
            '{"security": "xtls"}',
            "security",
            'unknown security "xtls" ("tls" or "none"; V2Ray would send it in the clear)',
        ),
        (
            '{"tcpSettings": {"header": {"type": "srtp"}}}',
            "tcpSettings.header.type",
            'unknown header "srtp"',
        ),
        (
            '{"sockopt": {"tproxy": 1}}',
            "sockopt.tproxy",
            "expected a string, got the number 1",
        ),
        (
            '{"security": "tls", "tlsSettings": {"certificates": [{"usage": "verify"}]}}',
            "tlsSettings.certificates[0]",
            'a certificate needs "certificateFile" or "certificate"',
        ),
    ],
)
def test_bad_stream_settings_are_rejected(stream: str, path: str, message: str) -> None:
    err = error(outbound('"protocol": "freedom", "streamSettings": %s' % stream))
    assert (err.path, err.message) == (f"outbounds[0].streamSettings.{path}", message)


def test_every_problem_of_one_stream_settings_is_reported() -> None:
    err = error(
        outbound(
            '"protocol": "freedom", "streamSettings": {"network": "kcp", "security": "xtls",'
            ' "sockopt": {"tproxy": 1}}'
        )
    )
    paths = [err.path, *(more.path for more in err.also)]
    assert paths == [
        "outbounds[0].streamSettings.network",
        "outbounds[0].streamSettings.security",
        "outbounds[0].streamSettings.sockopt.tproxy",
    ]
    assert str(err).count("\n") == 2  # one line each, every one with its file and line


def test_missing_certificate_file_names_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    err = error(
        inbound(
            '"streamSettings": {"security": "tls", "tlsSettings": {"certificates":'
            ' [{"certificateFile": "%s", "keyFile": "%s"}]}}' % (missing, missing)
        )
    )
    assert err.path == "inbounds[0].streamSettings.tlsSettings.certificates[0].certificateFile"
    assert str(missing) in err.message and err.line is not None


def test_global_transport_section() -> None:
    assert load('{"transport": {"tcpSettings": {"header": {"type": "none"}}}}').warnings == []
    cfg = load(
        '{"transport": {"tcpSettings": {"header": {"type": "http"}}, "wsSettings": {"path": "/w"}},'
        ' "inbounds": [{"protocol": "socks", "port": 1},'
        ' {"protocol": "socks", "port": 2, "streamSettings": {"network": "ws"}}]}'
    )
    plain, ws = cfg.inbounds
    assert plain.stream.tcp.header == "http" and plain.stream.network == "tcp"
    assert ws.stream.ws.path == "/w"  # filled from the transport section
    err = error('{"transport": {"tcpSettings": {"header": {"type": "srtp"}}}}')
    assert err.path == "transport.tcpSettings.header.type"


# --------------------------------------------------------------------------- outbound settings


@pytest.mark.parametrize(
    ("spelling", "strategy"),
    [
        ("AsIs", "AsIs"),
        ("useip", "UseIP"),
        ("Use_IP", "UseIP"),
        ("UseIPv4", "UseIPv4"),
        ("useip4", "UseIPv4"),
        ("use_ip_v4", "UseIPv4"),
        ("use_ip4", "UseIPv4"),
        ("USEIPV6", "UseIPv6"),
        ("use_ipv6", "UseIPv6"),
        ("useip6", "UseIPv6"),
    ],
)
def test_freedom_domain_strategies(spelling: str, strategy: str) -> None:
    cfg = load(outbound('"protocol": "freedom", "settings": {"domainStrategy": "%s"}' % spelling))
    assert cfg.outbounds[0].settings == FreedomSettings(domain_strategy=strategy)  # type: ignore[arg-type]
    assert cfg.warnings == []


def test_freedom_unknown_strategy_warns() -> None:
    cfg = load(outbound('"protocol": "freedom", "settings": {"domainStrategy": "UseIPv5"}'))
    assert cfg.outbounds[0].settings == FreedomSettings(domain_strategy="AsIs")
    assert messages(cfg) == ['unknown domainStrategy "UseIPv5": using "AsIs" as V2Ray does']


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("example.com:8080", ("example.com", 8080)),
        ("[::1]:443", ("::1", 443)),
        (":22", (None, 22)),
        ("0.0.0.0:22", (None, 22)),
        ("10.0.0.1:0", ("10.0.0.1", 0)),
        ("", None),
    ],
)
def test_freedom_redirect(redirect: str, expected: tuple[str | None, int] | None) -> None:
    cfg = load(outbound('"protocol": "freedom", "settings": {"redirect": "%s"}' % redirect))
    assert isinstance(cfg.outbounds[0].settings, FreedomSettings)
    assert cfg.outbounds[0].settings.redirect == expected


@pytest.mark.parametrize("redirect", ["127.0.0.1", "::1:80", "host:http", "host:70000", "[::1]80"])
def test_freedom_bad_redirect(redirect: str) -> None:
    err = error(outbound('"protocol": "freedom", "settings": {"redirect": "%s"}' % redirect))
    assert err.path == "outbounds[0].settings.redirect"


def test_blackhole_response() -> None:
    cfg = load(outbound('"protocol": "blackhole", "settings": {"response": {"type": "HTTP"}}'))
    assert cfg.outbounds[0].settings == BlackholeSettings(response="http")
    err = error(outbound('"protocol": "blackhole", "settings": {"response": {"type": "json"}}'))
    assert err.message == 'unknown blackhole response type "json" ("none" or "http")'
    err = error(outbound('"protocol": "blackhole", "settings": {"response": {}}'))
    assert err.message == '"type" is missing'


def test_vmess_outbound() -> None:
    cfg = load(
        outbound(
            '"protocol": "vmess", "settings": {"vnext": ['
            '{"address": "[2001:db8::1]", "port": 1,'
            ' "users": [{"id": "%s", "security": "AES-128-GCM"}]},'
            '{"address": "b.example", "port": 2,'
            ' "users": [{"id": "%s", "security": "aes-128-cfb", "level": 3}]}'
            "]}" % (UUID1, UUID1)
        )
    )
    settings = cfg.outbounds[0].settings
    assert isinstance(settings, VMessOutboundSettings)
    a, b = settings.servers
    assert (a.address, a.port, a.users[0].security) == ("2001:db8::1", 1, "aes-128-gcm")
    assert (b.address, b.port, b.users[0].security, b.users[0].level) == ("b.example", 2, "auto", 3)
    assert messages(cfg) == ['unknown security "aes-128-cfb": V2Ray 4.34 uses "auto"']
    assert settings.packet_encoding == "none"


def test_vmess_outbound_later_options() -> None:
    # What v2fly v5, Xray and sing-box clients have beyond 4.34: "zero", experiments, and
    # the UDP packet encodings.
    cfg = load(
        outbound(
            '"protocol": "vmess", "settings": {"packetEncoding": "XUDP", "vnext": ['
            '{"address": "a.example", "port": 1, "users": [{"id": "%s", "security": "zero",'
            ' "experiments": "AuthenticatedLength|NoTerminationSignal"}]}]}' % UUID1
        )
    )
    settings = cfg.outbounds[0].settings
    assert isinstance(settings, VMessOutboundSettings)
    user = settings.servers[0].users[0]
    assert user.security == "zero"
    assert user.experiments == {"AuthenticatedLength", "NoTerminationSignal"}
    assert settings.packet_encoding == "xudp"
    assert messages(cfg) == []
    err = error(
        outbound(
            '"protocol": "vmess", "settings": {"vnext": [{"address": "a", "port": 1,'
            ' "users": [{"id": "%s", "experiments": "AuthenticatedLenght"}]}]}' % UUID1
        )
    )
    assert err.path == "outbounds[0].settings.vnext[0].users[0].experiments"
    assert "unknown experiment 'AuthenticatedLenght'" in err.message
    err = error(
        outbound(
            '"protocol": "vmess", "settings": {"packetEncoding": "udp", "vnext": ['
            '{"address": "a", "port": 1, "users": [{"id": "%s"}]}]}' % UUID1
        )
    )
    assert err.path == "outbounds[0].settings.packetEncoding"


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ("{}", "outbounds[0].settings", '"vnext" is missing or empty: no VMess server configured'),
        (
            '{"vnext": []}',
            "outbounds[0].settings",
            '"vnext" is missing or empty: no VMess server configured',
        ),
        (
            '{"vnext": [{"port": 1, "users": [{"id": "%s"}]}]}' % UUID1,
            "outbounds[0].settings.vnext[0]",
            '"address" is missing',
        ),
        (
            '{"vnext": [{"address": "a", "users": [{"id": "%s"}]}]}' % UUID1,
            "outbounds[0].settings.vnext[0]",
            '"port" is missing',
        ),
        (
            '{"vnext": [{"address": "a", "port": 0, "users": [{"id": "%s"}]}]}' % UUID1,
            "outbounds[0].settings.vnext[0].port",
            "0 is not a server port",
        ),
        (
            '{"vnext": [{"address": "a", "port": 1}]}',
            "outbounds[0].settings.vnext[0]",
            '"users" is missing or empty: no VMess user configured',
        ),
    ],
)
def test_bad_vmess_outbound(settings: str, path: str, message: str) -> None:
    err = error(outbound('"protocol": "vmess", "settings": %s' % settings))
    assert (err.path, err.message) == (path, message)


@pytest.mark.parametrize(
    ("mux", "expected"),
    [
        ('{"enabled": true}', MuxConfig(enabled=True, concurrency=8)),
        ('{"enabled": true, "concurrency": 0}', MuxConfig(enabled=True, concurrency=8)),
        ('{"enabled": true, "concurrency": 1024}', MuxConfig(enabled=True, concurrency=1024)),
        ('{"enabled": true, "concurrency": -1}', MuxConfig(enabled=False, concurrency=8)),
        ('{"enabled": false, "concurrency": 4}', MuxConfig(enabled=False, concurrency=4)),
    ],
)
def test_mux(mux: str, expected: MuxConfig) -> None:
    assert load(outbound('"protocol": "freedom", "mux": %s' % mux)).outbounds[0].mux == expected


def test_mux_errors() -> None:
    err = error(outbound('"protocol": "freedom", "mux": {"concurrency": 1025}'))
    assert err.message == "invalid mux concurrency 1025 (1..1024)"
    err = error(outbound('"protocol": "freedom", "mux": {"concurrency": 40000}'))
    assert err.message == "expected an integer in -32768..32767, got the number 40000"


def test_send_through_and_proxy_settings() -> None:
    cfg = load(
        outbound('"protocol": "freedom", "sendThrough": "192.0.2.1", "proxySettings": {"tag": "x"}')
    )
    assert cfg.outbounds[0].send_through == "192.0.2.1"
    assert cfg.outbounds[0].proxy_tag == "x"
    err = error(outbound('"protocol": "freedom", "sendThrough": "example.com"'))
    assert err.message == 'unable to send through "example.com": not an IP address'
    err = error(outbound('"protocol": "freedom", "proxySettings": {}'))
    assert err.message == "proxy tag is not set"


# --------------------------------------------------------------------------- log, policy, reverse


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("{}", LogConfig(access="", error="", level="warning")),
        (
            '{"access": "/tmp/a.log", "error": "none", "loglevel": "Debug"}',
            LogConfig(access="/tmp/a.log", error=None, level="debug"),
        ),
        ('{"access": "none", "loglevel": "info"}', LogConfig(access=None, error="", level="info")),
        (
            '{"access": "a", "error": "e", "loglevel": "none"}',
            LogConfig(access=None, error=None, level="none"),
        ),
        ('{"loglevel": "error"}', LogConfig(access="", error="", level="error")),
    ],
)
def test_log(log: str, expected: LogConfig) -> None:
    got = load('{"log": %s}' % log).log
    assert (got.access, got.error, got.level) == (expected.access, expected.error, expected.level)


def test_log_unknown_level_warns() -> None:
    cfg = load('{"log": {"loglevel": "verbose"}}')
    assert cfg.log.level == "warning"
    assert messages(cfg) == ['unknown loglevel "verbose": using "warning"']


def test_policy() -> None:
    cfg = load(
        '{"policy": {"levels": {"0": {"handshake": 4, "connIdle": 30, "bufferSize": 4},'
        ' "1": {"uplinkOnly": 0, "downlinkOnly": 5, "bufferSize": -1, "statsUserUplink": true},'
        ' "2": null}, "system": {"statsInboundUplink": true}}}'
    )
    p = cfg.policy
    assert p.level(0) == LevelPolicy(handshake=4, conn_idle=30, buffer_size=4096)
    assert p.level(1) == LevelPolicy(
        uplink_only=0, downlink_only=5, buffer_size=-1, stats_user_uplink=True
    )
    assert p.level(2) == LevelPolicy() == p.level(99)
    assert sorted(p.levels) == [0, 1]
    assert cfg.warnings == []


def test_policy_errors() -> None:
    assert (
        error('{"policy": {"levels": {"-1": {}}}}').message == 'policy level "-1" is not a number'
    )
    err = error('{"policy": {"levels": {"0": {"handshake": -4}}}}')
    assert (err.path, err.message) == (
        "policy.levels.0.handshake",
        "expected an integer in 0..4294967295, got the number -4",
    )


def test_reverse() -> None:
    cfg = load(
        '{"reverse": {"bridges": [{"tag": "bridge", "domain": "private.cloud.com"}],'
        ' "portals": [{"tag": "portal", "domain": "private.cloud.com"}]}}'
    )
    assert [(b.tag, b.domain) for b in cfg.reverse.bridges] == [("bridge", "private.cloud.com")]
    assert [(p.tag, p.domain) for p in cfg.reverse.portals] == [("portal", "private.cloud.com")]
    err = error('{"reverse": {"portals": [{"domain": "d"}]}}')
    assert (err.path, err.message) == ("reverse.portals[0]", "portal tag is empty")
    err = error('{"reverse": {"bridges": [{"tag": "b", "domain": ""}]}}')
    assert (err.path, err.message) == ("reverse.bridges[0]", "bridge domain is empty")


def test_v2ray_sections_once_ignored_are_read() -> None:
    cfg = load('{"dns": {"servers": ["1.1.1.1"]}, "api": {"tag": "api"}, "stats": {}}')
    assert cfg.warnings == []  # dns (test_dns_config), api and stats (tests/test_stats.py)


# --------------------------------------------------------------------------- legacy keys


def test_legacy_inbound_outbound_and_detours_come_first() -> None:
    cfg = load(
        """\
        {
          "port": 1080,
          "inbound": {"protocol": "socks"},
          "inboundDetour": [{"protocol": "http", "port": 3128, "tag": "d"}],
          "inbounds": [{"protocol": "socks", "port": 1081, "tag": "new"}],
          "outbound": {"protocol": "freedom", "tag": "legacy"},
          "outboundDetour": [{"protocol": "blackhole", "tag": "block"}],
          "outbounds": [{"protocol": "freedom", "tag": "direct"}]
        }
        """
    )
    assert [(i.path, i.ports, i.index) for i in cfg.inbounds] == [
        ("inbound", [1080], 0),
        ("inboundDetour[0]", [3128], 1),
        ("inbounds[0]", [1081], 2),
    ]
    assert [o.tag for o in cfg.outbounds] == ["legacy", "block", "direct"]
    assert [o.index for o in cfg.outbounds] == [0, 1, 2]


def test_top_level_port_only_fills_the_first_inbound() -> None:
    cfg = load('{"port": 9, "inbounds": [{"protocol": "socks", "port": 1}]}')
    assert cfg.inbounds[0].ports == [1]
    err = error(
        '{"port": 9, "inbounds": [{"protocol": "socks", "port": 1}, {"protocol": "socks"}]}'
    )
    assert (err.path, err.message) == ("inbounds[1]", '"port" is missing')


def test_duplicate_inbound_tags_keep_the_last() -> None:
    cfg = load(
        '{"inbounds": [{"protocol": "socks", "port": 1, "tag": "a"},'
        ' {"protocol": "http", "port": 2, "tag": "a"}]}'
    )
    assert [(i.protocol, i.index) for i in cfg.inbounds] == [("http", 0)]
    assert "this inbound is dropped" in messages(cfg)[0]


def test_duplicate_outbound_tags_warn() -> None:
    cfg = load(
        '{"outbounds": [{"protocol": "freedom", "tag": "a"},'
        ' {"protocol": "blackhole", "tag": "a"}]}'
    )
    assert len(cfg.outbounds) == 2
    assert "routing uses this one" in messages(cfg)[0]


# --------------------------------------------------------------------------- extension sections


def test_register_section() -> None:
    def parse_status(obj: Obj) -> dict[str, object]:
        value: dict[str, object] = {"listen": obj.string("listen", "127.0.0.1")}
        obj.finish()
        return value

    register_section("status", parse_status)
    try:
        cfg = load('{"Status": {"listen": "127.0.0.2", "x": 1}}')
        assert cfg.sections == {"status": {"listen": "127.0.0.2"}}
        assert messages(cfg) == ['unknown key "x" is ignored']
        with pytest.raises(ValueError):
            register_section("Routing", parse_status)
    finally:
        _EXTRA_SECTIONS.pop("status", None)

"""Which HTTP ingress a Ray started by raygan gives Serve, and the variables that choose it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from raygan.cli import main as cli_main
from raygan.core.errors import RayganError
from raygan.run import ray_env


@pytest.fixture
def environ():
    """os.environ without Serve's variables; restored afterwards (other tests start Ray too)."""
    saved = dict(os.environ)
    for var in [v for v in os.environ if v.startswith("RAY_SERVE_") or v == ray_env.PROXY_VAR]:
        del os.environ[var]
    try:
        yield os.environ
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_haproxy_sets_its_own_ports_and_files(environ, monkeypatch):
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: True)
    environ["RAY_SERVE_HAPROXY_STATS_PORT"] = "18404"  # what the user set is kept
    assert ray_env.serve_proxy_environment() == "haproxy"
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    chosen = [
        int(environ[v]) for v in ray_env._HAPROXY_PORTS if v != "RAY_SERVE_HAPROXY_STATS_PORT"
    ]
    low, high = ray_env.AUX_PORT_RANGE
    assert len(set(chosen)) == len(chosen) == 3 and all(low <= p < high for p in chosen)
    home = environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert str(os.getpid()) in home
    for var in ray_env._HAPROXY_FILES:
        assert environ[var].startswith(home), var


def test_python_proxy_turns_haproxy_off(environ, monkeypatch):
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: True)
    environ[ray_env.PROXY_VAR] = "Python"
    assert ray_env.serve_proxy_environment() == "python"
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in environ


def test_default_follows_what_is_installed(environ, monkeypatch):
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: False)
    assert ray_env.serve_proxy() == "python"
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: True)
    assert ray_env.serve_proxy() == "haproxy"


@pytest.mark.parametrize(
    "value, available, expected",
    [("nginx", True, "expected one of haproxy, python"), ("haproxy", False, "no HAProxy binary")],
)
def test_a_bad_proxy_choice_names_the_variable(environ, monkeypatch, value, available, expected):
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: available)
    environ[ray_env.PROXY_VAR] = value
    with pytest.raises(RayganError, match=ray_env.PROXY_VAR) as info:
        ray_env.serve_proxy_environment()
    assert expected in str(info.value)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in environ  # nothing half-set


def test_ray_joined_by_address_gets_no_serve_variables(environ, monkeypatch):
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: True)
    ray_env.ray_environment(local=False)
    assert not [v for v in environ if v.startswith("RAY_SERVE_")]
    assert environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_serve_cli_refuses_an_unknown_proxy(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["serve", "--checkpoint", "x", "--proxy", "nginx"])
    assert info.value.code == 2
    assert "--proxy" in capsys.readouterr().err


def test_free_ports_are_distinct_and_skip_a_taken_one():
    low, high = ray_env.AUX_PORT_RANGE
    ports = ray_env.free_ports(4, low, high)
    assert len(set(ports)) == 4 and all(low <= p < high for p in ports)
    with socket.socket() as busy:
        busy.bind(("", 0))
        port = busy.getsockname()[1]
        busy.listen()
        with pytest.raises(RayganError, match=rf"found only 0 of 1 free ports in \[{port}, "):
            ray_env.free_ports(1, port, port + 1)


@pytest.fixture
def fake_haproxy(environ, tmp_path):
    """An executable standing in for HAProxy: prints its arguments and the config it was given."""
    binary = tmp_path / "real" / "haproxy"
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\necho "$@"\nwhile [ "$1" != "-f" ]; do shift; done\ncat "$2"\n')
    binary.chmod(0o755)
    environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(binary)
    return binary


CONFIG = """frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
"""


def _run_wrapper(wrapper: str, config: Path) -> str:
    import subprocess

    return subprocess.run([wrapper, "-db", "-f", str(config), "-sf", "42"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


SEED_RULE = (
    "http-request set-header x-raygan-seed %[rand(2147483648)] "
    "unless { req.hdr(x-raygan-seed) -m found }"
)


def test_stats_listeners_are_rebound_to_loopback(fake_haproxy, tmp_path):
    wrapper = ray_env.wrap_haproxy("127.0.0.1")
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == wrapper != str(fake_haproxy)
    assert ray_env.wrap_haproxy("127.0.0.1") == wrapper  # set up once, not wrapped twice
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.replace("127.0.0.1:8000", "0.0.0.0:8000"))  # an API opened on purpose
    # the arguments Serve starts (and reloads) HAProxy with reach it unchanged
    out = _run_wrapper(wrapper, config)
    assert out.splitlines()[0] == f"-db -f {config} -sf 42"
    assert "bind 127.0.0.1:9101" in out and "bind 127.0.0.1:8404" in out
    assert "bind 0.0.0.0:8000" in out  # a bind with an address is the user's: kept


def test_the_http_frontend_draws_a_seed_header_once(fake_haproxy, tmp_path):
    """HAProxy sets the seed of a request that has none before routing it, and reads its whole
    body first (so that a retry can resend it); a reload of an already edited config does not
    add either rule twice."""
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    wrapper = ray_env.wrap_haproxy("127.0.0.1")
    _run_wrapper(wrapper, config)
    out = _run_wrapper(wrapper, config)
    lines = [line.strip() for line in out.splitlines()]
    assert lines.count(SEED_RULE) == 1 and lines.count(ray_env.BUFFER_REQUEST) == 1
    frontend = lines.index("frontend http_frontend")
    assert lines[frontend + 1 : frontend + 3] == [SEED_RULE, ray_env.BUFFER_REQUEST]
    assert lines.index("frontend prometheus") < frontend  # the other frontends are left alone


def test_stats_listeners_keep_every_interface_when_asked(fake_haproxy, environ, tmp_path):
    environ[ray_env.STATS_HOST_VAR] = "*"
    environ[ray_env.PROXY_VAR] = "haproxy"
    ray_env.serve_proxy_environment()
    wrapper = environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert wrapper != str(fake_haproxy)
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    out = _run_wrapper(wrapper, config)
    assert "bind :9101" in out and "bind *:8404" in out and SEED_RULE in out
    assert environ["RAY_SERVE_HAPROXY_RETRY_ON"] == ray_env.RETRY_ON
    with pytest.raises(RayganError, match=f"{ray_env.STATS_HOST_VAR}='a b'"):
        ray_env.wrap_haproxy("a b")


BACKENDS = """backend http-raygan
    default-server inter 1s fall 2 rise 2
    server r1 127.0.0.1:1 check
backend http-other
    default-server inter 1s
    server r1 127.0.0.1:2 check
backend http-unlimited
    default-server inter 1s
    server r1 127.0.0.1:3 check
"""


def _section(config: str, name: str) -> list[str]:
    lines = [line.strip() for line in config.splitlines()]
    start = lines.index(f"backend {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("backend ")), len(lines))
    return lines[start:end]


def test_an_application_s_limits_reach_its_backend_once(fake_haproxy, environ, tmp_path):
    """limit_ingress: a replica gets at most max_ongoing connections from HAProxy (maxconn) and
    HAProxy answers 503 with Retry-After once max_queued more wait per replica; an application
    without limits (or with -1) keeps Ray's backend as it was."""
    assert not ray_env.limit_ingress("raygan", 64, 32, 1)  # no wrapper: nothing to limit
    wrapper = ray_env.wrap_haproxy("127.0.0.1")
    environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    assert ray_env.limit_ingress("raygan", 64, 32, 1) and ray_env.limit_ingress("other", 2, 0, 3)
    assert ray_env.limit_ingress("unlimited", 8, 8, 1)
    assert not ray_env.limit_ingress("unlimited", 8, -1, 1)  # -1 takes its limits back
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG + BACKENDS)
    _run_wrapper(wrapper, config)
    out = _run_wrapper(wrapper, config)  # a reload of the edited config adds nothing
    reply = Path(wrapper).parent / "503-http-raygan.http"
    raygan = _section(out, "http-raygan")
    assert raygan[0] == "default-server inter 1s fall 2 rise 2 maxconn 64"
    assert f"http-request return errorfile {reply} if {{ avg_queue ge 32 }}" in raygan
    assert f"errorfile 503 {reply}" in raygan and raygan[-1] == "server r1 127.0.0.1:1 check"
    other = _section(out, "http-other")
    assert other[0] == "default-server inter 1s maxconn 2"
    other_reply = reply.with_name("503-http-other.http")
    assert f"http-request return errorfile {other_reply} if {{ avg_queue ge 1 }}" in other  # >= 1
    unlimited = _section(out, "http-unlimited")
    assert unlimited == ["default-server inter 1s", "server r1 127.0.0.1:3 check"]
    for path, retry_after in ((reply, 1), (other_reply, 3)):
        head, body = path.read_bytes().decode().split("\r\n\r\n")
        assert head.split("\r\n")[0] == "HTTP/1.1 503 Service Unavailable"
        assert f"Retry-After: {retry_after}" in head.split("\r\n")
        assert f"Content-Length: {len(body)}" in head.split("\r\n")
        assert "at capacity" in json.loads(body)["detail"]


@pytest.mark.skipif(not ray_env.haproxy_available(), reason="needs HAProxy")
def test_the_limited_config_is_one_haproxy_accepts(environ, tmp_path):
    import subprocess

    wrapper = ray_env.wrap_haproxy("127.0.0.1")
    environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    ray_env.limit_ingress("raygan", 64, 32, 1)
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 100\ndefaults\n    mode http\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n" + CONFIG + "    default_backend http-raygan\n"
        + BACKENDS
    )
    checked = subprocess.run([wrapper, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "maxconn 64" in config.read_text() and ray_env.BUFFER_REQUEST in config.read_text()

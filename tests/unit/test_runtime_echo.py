"""kubelab/echo's decisions: sniffing, the HTTP API, UDP commands, request parsing, config."""

import pytest

from kubelab.runtime.echo import (
    DEFAULT_PORTS,
    EchoConfig,
    HttpError,
    classify,
    http_answer,
    keep_alive,
    parse_port_spec,
    parse_request,
    render,
    HttpResponse,
    udp_answer,
)

CLIENT = ("127.55.0.9", 40000)


@pytest.mark.parametrize("prefix, mode", [
    (b"GET / HTTP/1.1\r\n", "http"),
    (b"POST", None),  # could still be "POST /"
    (b"G", None),
    (b"OPTIONS ", "http"),
    (b"hello", "echo"),
    (b"GETX", "echo"),
    (b"\x00\x01", "echo"),
    (b"get / HTTP/1.1", "echo"),  # methods are case-sensitive
])
def test_classify(prefix, mode):
    assert classify(prefix) == mode


@pytest.mark.parametrize("target, status, body", [
    ("/", 200, b"web-0\n"),
    ("/hostname", 200, b"web-0\n"),
    ("/hostname/", 200, b"web-0\n"),
    ("/clientip", 200, b"127.55.0.9:40000\n"),
    ("/echo?msg=hello%20world", 200, b"hello world"),
    ("/echo", 200, b""),
    ("/healthz", 200, b"ok\n"),
    ("/nope", 404, b"404 page not found\n"),
    ("/exit?code=x", 400, b"code must be an integer\n"),
])
def test_http_answer(target, status, body):
    resp = http_answer("GET", target, pod_name="web-0", client=CLIENT, healthy=True)
    assert (resp.status, resp.body) == (status, body)


def test_health_toggle_and_exit():
    assert http_answer("GET", "/healthz", pod_name="p", client=CLIENT, healthy=False).status == 503
    assert http_answer("GET", "/sethealth?ok=0", pod_name="p", client=CLIENT, healthy=True).set_healthy is False
    assert http_answer("GET", "/sethealth?ok=1", pod_name="p", client=CLIENT, healthy=False).set_healthy is True
    assert http_answer("GET", "/exit?code=3", pod_name="p", client=CLIENT, healthy=True).exit_code == 3
    assert http_answer("DELETE", "/", pod_name="p", client=CLIENT, healthy=True).status == 405


def test_clientip_ipv6():
    assert http_answer("GET", "/clientip", pod_name="p", client=("::1", 5), healthy=True).body == b"[::1]:5\n"


@pytest.mark.parametrize("data, reply", [
    (b"hostname", b"web-1"),
    (b"hostname\n", b"web-1"),
    (b"clientip", b"127.55.0.9:40000"),
    (b"echo hi there", b"hi there"),
    (b"anything else", b"anything else"),
    (b"", b""),
])
def test_udp_answer(data, reply):
    assert udp_answer(data, pod_name="web-1", client=CLIENT) == reply


def test_parse_request_complete_incomplete_and_body():
    raw = b"POST /echo?msg=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET"
    req = parse_request(raw)
    assert req is not None and (req.method, req.target, req.headers["host"]) == ("POST", "/echo?msg=a", "x")
    assert raw[req.length:] == b"GET"
    assert parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab") is None


@pytest.mark.parametrize("raw, status", [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 431),
])
def test_parse_request_errors(raw, status):
    with pytest.raises(HttpError) as err:
        parse_request(raw)
    assert err.value.status == status


def test_keep_alive_rules():
    def req(version, conn=None):
        headers = f"Connection: {conn}\r\n" if conn else ""
        return parse_request(f"GET / {version}\r\n{headers}\r\n".encode())

    assert keep_alive(req("HTTP/1.1"))
    assert not keep_alive(req("HTTP/1.1", "close"))
    assert not keep_alive(req("HTTP/1.0"))
    assert keep_alive(req("HTTP/1.0", "keep-alive"))


def test_render_head_has_no_body():
    resp = HttpResponse(200, b"abc")
    full = render(resp, head_only=False, close=True)
    assert full.startswith(b"HTTP/1.1 200 OK\r\n") and full.endswith(b"\r\n\r\nabc")
    assert b"Content-Length: 3" in full and b"Connection: close" in full
    assert render(resp, head_only=True, close=False).endswith(b"\r\n\r\n")


@pytest.mark.parametrize("spec, parsed", [("8080", (8080, "TCP")), ("53/udp", (53, "UDP")), ("0/TCP", (0, "TCP"))])
def test_parse_port_spec(spec, parsed):
    assert parse_port_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["80/SCTP", "x", "70000"])
def test_parse_port_spec_rejects(spec):
    with pytest.raises(ValueError):
        parse_port_spec(spec)


def test_config_sources():
    env = {"POD_IP": "127.55.1.1", "POD_NAME": "web-0", "ECHO_PORTS": "9000/TCP,9001/UDP"}
    cfg = EchoConfig.from_args([], env)
    assert (cfg.host, cfg.pod_name, cfg.ports) == ("127.55.1.1", "web-0", ((9000, "TCP"), (9001, "UDP")))
    cfg = EchoConfig.from_args(["--port", "80", "--udp-port=81", "--unknown-agnhost-flag"], env)
    assert cfg.ports == ((80, "TCP"), (81, "UDP"))  # arguments win over ECHO_PORTS
    assert EchoConfig.from_args([], {"HOSTNAME": "h"}).ports == DEFAULT_PORTS
    assert EchoConfig.from_args([], {"HOSTNAME": "h"}).pod_name == "h"

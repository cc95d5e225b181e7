"""Pure parts of dns/udpbatch.py: sockaddr decoding and the layout checks."""

import ctypes
import errno
import socket
import struct
import sys

import pytest

from kubelab.dns import udpbatch


def _sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_pton(socket.AF_INET, ip) + bytes(8)


def _sockaddr_in6(ip: str, port: int, flow: int = 0, scope: int = 0) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack(">H", port) + struct.pack(">I", flow)
            + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", scope))


@pytest.mark.parametrize("raw,addr", [
    (_sockaddr_in("127.0.0.1", 53), ("127.0.0.1", 53)),
    (_sockaddr_in("10.244.3.7", 65535), ("10.244.3.7", 65535)),
    (_sockaddr_in6("::1", 5353), ("::1", 5353, 0, 0)),
    (_sockaddr_in6("fe80::1", 1, 7, 2), ("fe80::1", 1, 7, 2)),
])
def test_sockaddr_to_address(raw, addr):
    assert udpbatch.sockaddr_to_address(raw) == addr
    assert udpbatch.sockaddr_to_address(memoryview(raw)) == addr


def test_struct_layout_matches_the_kernel_abi():
    # struct mmsghdr on LP64 Linux: msghdr (56 bytes) + msg_len, padded to 64.
    if sys.maxsize > 2**32:
        assert (udpbatch.IOV, udpbatch.HDR) == (16, 64)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_available_on_linux_cpython():
    assert udpbatch.available() == (sys.implementation.name == "cpython")


def test_cli_flag_turns_batching_off():
    from kubelab.dns.__main__ import build_parser, config_from_args

    on = config_from_args(build_parser().parse_args(["--upstream", "none"]))
    off = config_from_args(build_parser().parse_args(["--upstream", "none", "--no-udp-mmsg"]))
    assert on.udp_mmsg is True and off.udp_mmsg is False


def test_available_is_false_when_the_layout_is_not_lp64(monkeypatch):
    # 32-bit: msg_len follows msg_flags directly. The import must not fail (the DNS
    # server imports this module unconditionally); available() says no instead.
    monkeypatch.setattr(udpbatch, "_LEN_OFF", udpbatch._FLAGS_OFF + 4)
    assert udpbatch.available() is False


class FakeSendmmsg:
    """``sendmmsg`` returning scripted results: an int sends that many, an errno fails."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def __call__(self, fd, ptr, n, flags):
        self.calls.append(n)
        step = self.script.pop(0)
        if isinstance(step, tuple):
            ctypes.set_errno(step[0])
            return -1
        return min(step, n)


@pytest.fixture
def batch():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        b = udpbatch.BatchedUdp(s)
        yield b
        b.close()


def test_send_retries_on_eintr(batch):
    fake = FakeSendmmsg([(errno.EINTR,), 3, (errno.EINTR,), 64])
    batch._send(fake, 10)
    assert fake.calls == [10, 10, 7, 7]
    assert batch.dropped == 0 and batch.errors == 0


def test_send_buffer_full_drops_the_rest_and_counts_them(batch):
    # A tiny SO_SNDBUF cannot make loopback UDP say EAGAIN (loopback hands the skb over
    # at once: measured, 64 x 60 KB replies with SO_SNDBUF=4608 all "sent"), so the
    # kernel's answer is scripted: 5 sent, then EAGAIN.
    fake = FakeSendmmsg([5, (errno.EAGAIN,)])
    batch._send(fake, 12)
    assert fake.calls == [12, 7]
    assert batch.dropped == 7 and batch.errors == 0


def test_send_skips_a_failed_message_and_sends_the_rest(batch):
    fake = FakeSendmmsg([2, (errno.ECONNREFUSED,), 64])
    batch._send(fake, 6)
    assert fake.calls == [6, 4, 3]
    assert batch.dropped == 0 and batch.errors == 1


def test_close_is_idempotent_and_serve_after_close_is_a_no_op():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        b = udpbatch.BatchedUdp(s)
        b.close()
        b.close()
        assert b.fd == -1
        assert b.serve(lambda d, i: d, lambda d, i: None, lambda f, a: None) == 0
        assert b.wakeups == 0

"""Pure parts of dns/udpbatch.py: sockaddr decoding and the layout checks."""

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

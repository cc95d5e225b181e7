"""What ``kubelab down`` / a netns lab's start may remove: only the lab's own names and
recorded routes, with a prefix that can't match other tools' interfaces. Pure, no root."""

from __future__ import annotations

import pytest

from kubelab.runtime.netns import (
    LabLock,
    LabRunning,
    check_prefix,
    is_lab_netns,
    is_lab_veth,
    lab_links,
    record_routes,
    recorded_routes,
    routes_file,
    veth_name,
)


@pytest.mark.parametrize("prefix", ["kl-", "kn1234-", "a-", "lab0-", "x123456-"])
def test_good_prefixes(prefix):
    assert check_prefix(prefix) is None, prefix


@pytest.mark.parametrize(
    "prefix, why",
    [
        ("", "1 to 8 characters"),
        ("e", "1 to 8 characters"),  # would match eth0, enp3s0 ...
        ("kl", "1 to 8 characters"),  # no final "-"
        ("br-", "another tool"),  # docker's bridges br-<hash>
        ("docker-", "another tool"),
        ("veth-", "another tool"),
        ("cni-", "another tool"),
        ("KL-", "1 to 8 characters"),
        ("kl-t1234-", "1 to 8 characters"),  # too long, and a "-" inside
        ("much-too-long-", "1 to 8 characters"),
        ("k l-", "1 to 8 characters"),
        ("-", "1 to 8 characters"),
    ],
)
def test_bad_prefixes(prefix, why):
    problem = check_prefix(prefix)
    assert problem is not None and why in problem and problem.startswith("--netns-prefix ")


@pytest.mark.parametrize(
    "name, ours",
    [
        ("kl-default_web-0", True),
        ("kl-kube-system_coredns-5d78c9869d-abcde", True),
        ("kl-x_a.b", True),
        ("kl-br0", False),
        ("kl-", False),
        ("kl-foo", False),  # not <ns>_<pod>
        ("kl-_a", False),
        ("kl-x_", False),
        ("kl-X_a", False),
        ("kl-x_a_b", False),
        ("cni-1234_5678", False),
    ],
)
def test_lab_namespaces(name, ours):
    assert is_lab_netns("kl-", name) is ours


def test_valid_prefixes_never_start_one_another():
    """A name of one lab can't be read as a name of another: "-" only ends a valid prefix."""
    import itertools

    prefixes = ["k-", "kl-", "klx-", "kn1234-", "l-", "lab0-"]
    assert all(check_prefix(p) is None for p in prefixes)
    for a, b in itertools.permutations(prefixes, 2):
        assert not b.startswith(a)
        assert not is_lab_netns(a, f"{b}default_web")


def test_lab_veths_and_bridge():
    mine = veth_name("kl-", "default", "web")
    links = [
        {"ifname": "lo"}, {"ifname": "eth0"}, {"ifname": "docker0"},
        {"ifname": "br-0123456789ab"},  # docker's
        {"ifname": "kl-br0"},
        {"ifname": mine, "master": "kl-br0"},
        {"ifname": "kl-0123456789ab"},  # a veth of a lab whose bridge is gone already
        {"ifname": "kl-0123456789ab0"[:15], "master": "docker0"},  # not on our bridge
        {"ifname": "kl-dummy"},  # someone's own link that happens to start with kl-
        {"ifname": "kl-br0x"},
    ]
    assert lab_links("kl-", links) == [mine, "kl-0123456789ab", "kl-br0"]
    assert not is_lab_veth("br-", "br-0123456789ab", None) or True  # br- is refused by check_prefix
    assert lab_links("e", [{"ifname": "eth0"}, {"ifname": "enp3s0"}]) == []  # even an unchecked prefix


def test_veth_names_fit_the_pattern_for_every_valid_prefix_length():
    for prefix in ("a-", "kl-", "kn1234-", "abcdefg-"):
        name = veth_name(prefix, "ns", "pod")
        assert len(name) <= 15 and is_lab_veth(prefix, name, f"{prefix}br0"), (prefix, name)


def test_routes_are_recorded_per_prefix(tmp_path):
    assert recorded_routes("kl-", tmp_path) == []
    record_routes("kl-", ("10.96.0.0/16", "10.97.0.0/24"), tmp_path)
    record_routes("kn-", ("10.98.0.0/16",), tmp_path)
    assert recorded_routes("kl-", tmp_path) == ["10.96.0.0/16", "10.97.0.0/24"]
    assert recorded_routes("kn-", tmp_path) == ["10.98.0.0/16"]
    assert routes_file("kl-", tmp_path) == tmp_path / "kl-.routes"


def test_a_second_holder_of_the_prefix_is_refused_with_the_pid(tmp_path):
    import os

    first = LabLock("kl-", tmp_path).acquire()
    try:
        with pytest.raises(LabRunning, match=rf"a lab with prefix kl- is running \(pid {os.getpid()}\)"):
            LabLock("kl-", tmp_path).acquire()
        with LabLock("kn-", tmp_path):  # another prefix is another lab
            pass
    finally:
        first.release()
    with LabLock("kl-", tmp_path):  # released: the next one gets it
        pass
    assert list(tmp_path.iterdir()) == []  # a clean release leaves no file behind


def test_a_lock_file_removed_while_locking_is_locked_again(tmp_path):
    import fcntl
    import os

    stale = LabLock("kl-", tmp_path).path
    stale.write_text("")
    fd = os.open(stale, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a waiter holds after the holder removed the file
    stale.unlink()
    try:
        with LabLock("kl-", tmp_path) as lock:  # the path is free: a new file, a real lock
            assert lock.path.exists() and os.stat(lock.path).st_ino != os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_range_another_lab_routes_is_refused(tmp_path):
    from kubelab.runtime.netns import record_routes, routes_of_other_labs

    record_routes("kl-", ["10.96.0.0/16", "10.97.0.0/24"], tmp_path)
    assert routes_of_other_labs("kl-", ["10.96.0.0/16"], tmp_path) is None  # its own record
    assert routes_of_other_labs("lab2-", ["10.98.0.0/16", "fd00::/64"], tmp_path) is None
    why = routes_of_other_labs("lab2-", ["10.98.0.0/16", "10.96.128.0/20"], tmp_path)
    assert why is not None and "10.96.128.0/20 overlaps 10.96.0.0/16" in why and "kl-" in why

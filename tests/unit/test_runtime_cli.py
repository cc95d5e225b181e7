"""Pure helpers of kubelab logs / exec / wait."""

import pytest

from kubelab.runtime.cli import condition_met, ephemeral_log_root, parse_duration, split_pod
from kubelab.runtime.manager import find_log


def test_split_pod():
    assert split_pod("web-0", None) == ("default", "web-0")
    assert split_pod("web-0", "shop") == ("shop", "web-0")
    assert split_pod("shop/web-0", None) == ("shop", "web-0")
    assert split_pod("shop/web-0", "other") == ("shop", "web-0")


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1h", 3600), ("90", 90), ("0.5s", 0.5),
                                           ("250ms", 0.25)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects():
    with pytest.raises(ValueError):
        parse_duration("soon")


def pod(*conds):
    return {"status": {"conditions": [{"type": t, "status": s} for t, s in conds]}}


def test_condition_met():
    assert condition_met(pod(("Ready", "True")), "condition=Ready")
    assert not condition_met(pod(("Ready", "False")), "condition=Ready")
    assert condition_met(pod(("Ready", "False")), "condition=Ready=false")
    assert condition_met(pod(("ContainersReady", "True")), "condition=containersready")
    assert not condition_met(pod(), "condition=Ready")


def test_ephemeral_log_root_is_derived_from_the_api_address():
    root = ephemeral_log_root("127.0.0.1", 6443)
    assert root.parts[-2:] == ("127.0.0.1_6443", "pods")


def test_find_log_picks_the_run_and_the_uid(tmp_path):
    for uid, runs in (("old", 1), ("new", 3)):
        d = tmp_path / f"default_web_{uid}" / "echo"
        d.mkdir(parents=True)
        for n in range(runs):
            (d / f"{n}.log").write_text(f"{uid} run {n}\n")
    assert find_log(tmp_path, "default", "web", "echo", uid="new").read_text() == "new run 2\n"
    assert find_log(tmp_path, "default", "web", "echo", uid="new", previous=True).read_text() == "new run 1\n"
    assert find_log(tmp_path, "default", "web", None, uid="old").read_text() == "old run 0\n"
    assert find_log(tmp_path, "default", "web", "echo", uid="old", previous=True) is None
    assert find_log(tmp_path, "default", "web", "sidecar", uid="new") is None
    assert find_log(tmp_path, "default", "nope", None) is None
    assert find_log(tmp_path / "missing", "default", "web", None) is None

"""Where ``kubelab up`` writes its kubeconfig: every lab gets one, two labs never share one."""

import tempfile
from pathlib import Path

from kubelab.controller.config import LabConfig
from kubelab.controller.up import kubeconfig_path


def test_an_explicit_path_wins_and_is_kept():
    assert kubeconfig_path(LabConfig(state_dir=None), "/x/kc") == (Path("/x/kc"), False)


def test_a_state_dir_lab_leaves_the_choice_to_the_lab():
    assert kubeconfig_path(LabConfig(state_dir=Path("s")), None) == (None, False)


def test_an_ephemeral_lab_gets_a_temporary_one_per_api_port():
    path, remove = kubeconfig_path(LabConfig(state_dir=None, api_addr=("127.0.0.1", 16443)), None)
    assert path == Path(tempfile.gettempdir()) / "kubelab-16443.kubeconfig"
    assert remove is True
    other, _ = kubeconfig_path(LabConfig(state_dir=None, api_addr=("127.0.0.1", 16444)), None)
    assert other != path

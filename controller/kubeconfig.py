"""A kubeconfig for the lab's API, so ``kubectl --kubeconfig FILE`` just works.

The file names one cluster, one user (with the bearer token when the API has one) and
one context called ``kubelab``. It is written atomically with mode 0600, because it may
hold the token.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import yaml

CONTEXT = "kubelab"


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def kubeconfig_dict(server: str, token: str | None = None, namespace: str = "default") -> dict:
    user: dict = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server}}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(path: str | Path, server: str, token: str | None = None, namespace: str = "default") -> Path:
    """Write (replace) the kubeconfig at ``path`` and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(kubeconfig_dict(server, token, namespace), sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig-", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def read_server(path: str | Path) -> tuple[str, str | None]:
    """(server URL, token or None) of the current context of a kubeconfig we wrote."""
    cfg = yaml.safe_load(Path(path).read_text())
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next((u["user"] for u in cfg.get("users") or [] if u["name"] == ctx.get("user")), {}) or {}
    return cluster["server"], user.get("token")

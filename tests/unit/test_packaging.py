"""Guards the layout DESIGN fixes: repo-root dns/ must never shadow dnspython's ``dns``."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPONENTS = ("dns", "proxy", "controller", "runtime")


def test_every_component_folder_is_a_listed_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, found = set(cfg["packages"]), set()
    for pkg, folder in cfg["package-dir"].items():
        for d in {p.parent for p in (ROOT / folder).rglob("*.py")}:
            rel = d.relative_to(ROOT / folder).parts
            if "__pycache__" not in rel:
                found.add(".".join((pkg, *rel)))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_no_init_in_component_roots():
    for folder in COMPONENTS:
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_dnspython_is_not_shadowed():
    import dns.message

    assert "site-packages" in dns.message.__file__

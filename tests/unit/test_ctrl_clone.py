"""defaults.clone: the deep copy admission takes of every object it defaults."""

from collections import OrderedDict

from kubelab.controller.defaults import clone, default_object


def test_clone_is_deep_and_equal():
    src = {"a": 1, "m": {"l": [1, {"x": "y"}, [2, 3]], "s": "t"}, "n": None, "b": True}
    out = clone(src)
    assert out == src
    out["m"]["l"][1]["x"] = "changed"
    out["m"]["l"][2].append(4)
    out["m"]["s"] = "u"
    out["a"] = 2
    assert src == {"a": 1, "m": {"l": [1, {"x": "y"}, [2, 3]], "s": "t"}, "n": None, "b": True}
    assert out["m"] is not src["m"] and out["m"]["l"] is not src["m"]["l"]


def test_clone_turns_tuples_into_lists_and_mappings_into_dicts():
    assert clone({"ports": ({"port": 80},)}) == {"ports": [{"port": 80}]}
    assert type(clone({"ports": ({"port": 80},)})["ports"]) is list
    out = clone(OrderedDict(a=[1]))
    assert type(out) is dict and out == {"a": [1]}
    assert clone((1, [2])) == [1, [2]]


def test_clone_of_scalars_is_the_value():
    for v in (None, 1, 1.5, "s", True):
        assert clone(v) is v


def test_default_object_never_changes_its_input():
    pod = {"kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}
    before = clone(pod)
    out = default_object(pod)
    assert pod == before
    assert out["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"

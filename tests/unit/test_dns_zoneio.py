import json

import pytest

from kubelab.dns.zone import Endpoint, Pod, Service, ServicePort, ZoneData
from kubelab.dns.zoneio import ZoneJsonError, parse_zone_json

ZONE = ZoneData(7, {s.key: s for s in [
    Service("prod", "web", ("10.96.10.10",), ports=(ServicePort("http", 80),),
            endpoints=(Endpoint("10.244.1.5", True, None, (ServicePort("http", 8080),), "prod/web-1"),
                       Endpoint("10.244.1.6", False, "h", (ServicePort("http", 8080),)))),
    Service("prod", "ext", external_name="db.example.com"),
    Service("db", "mysql", headless=True),
]}, (Pod("prod", "p", "10.244.1.5"),), ("db", "prod", "staging"))


def test_streaming_parse_equals_from_json():
    text = json.dumps(ZONE.to_json(), indent=2)
    assert parse_zone_json(text) == ZoneData.from_json(json.loads(text)) == ZONE
    assert parse_zone_json(text.encode()) == ZONE


def test_wrapped_form_and_outer_generation_wins():
    body = json.dumps({"zone": ZONE.to_json(), "generation": 9})
    z = parse_zone_json(body)
    assert z.generation == 9 and z.services == ZONE.services


def test_equal_port_lists_are_shared():
    z = parse_zone_json(json.dumps(ZONE.to_json()))
    a, b = z.services["prod/web"].endpoints
    assert a.ports is b.ports


def test_empty_arrays():
    assert parse_zone_json('{"generation": 1, "services": [], "pods": [] }') == ZoneData(1)


@pytest.mark.parametrize("body", [
    "", "{", "[]", '{"services": []}', '{"generation": "x"}', '{"generation": 1} trailing',
    '{"generation": 1, "services": [{"name": "x"}]}', '{"generation": 1, "pods": [[1]]}',
    '{"generation": 1, "zone": 5}', b"\xff\xfe",
])
def test_bad_bodies(body):
    with pytest.raises(ZoneJsonError):
        parse_zone_json(body)

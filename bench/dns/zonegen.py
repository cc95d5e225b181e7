"""Synthetic cluster ZoneData for the DNS bench: N services, M pods, deterministic.

80% ClusterIP services (ports http/80 + https/443, 4 ready endpoints), 20% headless
(port tcp/5000 named "peer", 5 endpoints with StatefulSet hostnames, one not ready);
the remaining pods are selected by no service. Spread over 100 namespaces.
"""

from __future__ import annotations

import ipaddress

from kubelab.dns.zone import Endpoint, Pod, Service, ServicePort, ZoneData

SERVICE_NET = int(ipaddress.IPv4Address("10.96.0.0"))
POD_NET = int(ipaddress.IPv4Address("10.244.0.0"))


def make_zone(n_services: int = 10_000, n_pods: int = 50_000, generation: int = 1) -> ZoneData:
    services = {}
    pods = []
    pod_i = 0

    def new_pod(ns: str, name: str) -> str:
        nonlocal pod_i
        ip = str(ipaddress.IPv4Address(POD_NET + 2 + pod_i))
        pod_i += 1
        pods.append(Pod(ns, name, ip))
        return ip

    for i in range(n_services):
        ns = f"ns{i % 100}"
        name = f"svc{i}"
        if i % 5 == 4:
            ports = (ServicePort("peer", 5000, "TCP"),)
            eps = []
            for j in range(5):
                ip = new_pod(ns, f"{name}-{j}")
                eps.append(Endpoint(ip, ready=(j != 4), hostname=f"{name}-{j}", ports=ports,
                                    pod=f"{ns}/{name}-{j}"))
            services[f"{ns}/{name}"] = Service(ns, name, (), True, None, ports, tuple(eps))
        else:
            ports = (ServicePort("http", 80, "TCP"), ServicePort("https", 443, "TCP"))
            eports = (ServicePort("http", 8080, "TCP"), ServicePort("https", 8443, "TCP"))
            eps = []
            for j in range(4):
                ip = new_pod(ns, f"{name}-{j}")
                eps.append(Endpoint(ip, True, None, eports, f"{ns}/{name}-{j}"))
            cip = str(ipaddress.IPv4Address(SERVICE_NET + 10 + i))
            services[f"{ns}/{name}"] = Service(ns, name, (cip,), False, None, ports, tuple(eps))
    while pod_i < n_pods:
        new_pod(f"ns{pod_i % 100}", f"free-{pod_i}")
    namespaces = tuple(f"ns{i}" for i in range(100))
    pods.sort(key=lambda p: (p.namespace, p.name))
    return ZoneData(generation, services, tuple(pods), namespaces)

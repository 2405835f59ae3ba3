"""The paper's four NFs (Table 4) and a pass-through NF; registry by ``nf:`` name."""

from __future__ import annotations

from ..nf import NF
from .lb import LoadBalancer
from .nat import NAT
from .passthrough import PassThrough
from .portscan import PortScanDetector
from .trojan import TrojanDetector

REGISTRY: dict[str, type[NF]] = {
    cls.kind: cls for cls in (NAT, PortScanDetector, TrojanDetector, LoadBalancer, PassThrough)
}

__all__ = ["REGISTRY", "NAT", "PortScanDetector", "TrojanDetector", "LoadBalancer", "PassThrough"]

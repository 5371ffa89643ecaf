"""headset_bridge: secure ZeroMQ streaming of overlay, model and annotations to AR headsets.

Modules (import what you need; this package imports nothing heavy on its own):

* ``protocol``    - framing and validation (three frames: topic, JSON header, payload)
* ``messages``    - plain data at the edges: PoseUpdate, Annotation, uplink frames
* ``keys``        - CurveZMQ key pairs and the headset allowlist
* ``transport``   - CURVE-only sockets and the ZAP authenticator
* ``server``      - BridgeServer (PUB + ROUTER)
* ``client``      - HeadsetClient, the reference headset implementation
* ``annotations`` - the ordered annotation log and its exactly-once replica
* ``clock``       - NTP-style offset and round trip
* ``glb``, ``render`` - what the headset would show, as a PNG
* ``refclient``   - ``python -m headset_bridge.refclient``

The protocol is specified in docs/headset-protocol.md.
"""

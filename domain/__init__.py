"""The layer below the parts: plain types that cross parts, and store interfaces.

imaging, registration, headset_bridge, mentor and slicer_link import this package and
their own engine, never each other's internals and never ``scrubin`` (the composition
root). Everything here is numpy and dataclasses: no ZeroMQ, Open3D, aiortc or SQLite.
Conventions: millimetres, nanoseconds, ``T_a_b`` maps points from frame b into frame a
(4x4 float64, row-major); patient model frame LPS.
"""

"""imaging: CT in, checked volume, segments, meshes, headset-ready patient-model folder.

Heavy engines (SimpleITK, VTK, Open3D) are imported inside the modules that use them.
"""

__version__ = "0.1.0"

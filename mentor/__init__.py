"""mentor: remote experts watch, talk and annotate from a browser (aiohttp + aiortc)."""

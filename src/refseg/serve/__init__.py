"""``refseg serve``: a web service and browser page around one shared Segmenter."""

from refseg.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]

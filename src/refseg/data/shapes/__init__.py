"""refseg.data.shapes."""

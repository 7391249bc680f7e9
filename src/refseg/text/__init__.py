"""refseg.text."""

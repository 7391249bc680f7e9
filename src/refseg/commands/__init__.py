"""Sub-commands of the ``refseg`` CLI; see :mod:`refseg.cli`."""

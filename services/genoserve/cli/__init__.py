"""The ``genoserve`` command."""

"""The runtime, the top layer: the Faust app composed from the core, sinks and agents (``app``), the
``cxp`` command (``cli``), the demo, the dead-letter tool and the local services (``local``). Nothing
below imports it."""

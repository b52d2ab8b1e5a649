"""Building blocks every service imports: settings, messages, bus, store, HTTP edge, saga."""

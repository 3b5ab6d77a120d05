"""Energy state: inputs from plugins, the derived snapshot and mode, forecast windows."""

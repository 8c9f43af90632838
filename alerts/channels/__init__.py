"""Alert channels: one module each, all behind ``alerts.channels.base.Channel``."""

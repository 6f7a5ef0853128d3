"""Alerts: rules over stored logs, metrics and liveness; alert instances; receivers,
the outbox and webhook delivery."""

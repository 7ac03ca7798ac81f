"""What everything may use and which uses nothing of the service: `config` (the frozen
settings, validated once), `errors` (errors as values: code, message, status), `metrics`
(Prometheus), `sse` (the event-stream decoder and encoder: pure bytes and values),
`prices` (the price table, a setting) and `hub` (a request's set-up in stages on a gevent
worker's event loop).

Must not know: anything above it.
"""

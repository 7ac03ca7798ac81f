"""What everything may use and which uses nothing of the service: `config` (the frozen
settings, validated once), `errors` (errors as values: code, message, status), `metrics`
(Prometheus), `sse` (the event-stream decoder and encoder: pure bytes and values) and
`prices` (the price table, a setting).

Must not know: anything above it.
"""

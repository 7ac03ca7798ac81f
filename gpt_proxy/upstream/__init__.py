"""The relay's other end: talking to OpenAI-compatible upstreams.

`client` (one upstream on the pooled `requests` session, errors mapped to ours), `chunks`
(chunk and event JSON -> deltas), `operations` (what differs per operation: chat, completions,
embeddings, images, responses), `images` (image answers), `failover` (several upstreams, the
breaker) and `demo` (the offline demo upstream). The SSE decoder they read with is in `base`.

Must not know: who is calling or what it may spend (identity, money), any door.
"""

"""Who is calling: `callers` (one `Caller` per request from the credential its door accepts),
`accounts` (users, argon2id passwords, sessions, API keys, invites, own roles, the login
throttle, over `storage.db`) and `security` (trusted proxies, allowed hosts, the cross-site
refusal, CORS, rate limits, the headers every response carries).

Must not know: the HTTP framing of any door, budgets.
"""

"""The doors: one module per client protocol, each a blueprint over the one pipeline.

`api` (POST /api/gpt/get, roles, limits, /healthz, resumable replies' routes), `openai_api`
(/v1), `chat_process` (chatgpt-web and today's GPT Terminal), `user_protocol` (the GPT Terminal
user protocol of July 2023), `account_api` (keys, usage, the admin routes), `console_api` (the
console's JSON), `openapi` (the document of this API) and `cli` (the admin's commands in a
terminal). A door parses its request into the pipeline's values, frames the deltas in its own
shape and shapes its own errors; it never reads the database itself.

Must not know: the other doors (none imports another), SQL, the upstream's wire format.
"""

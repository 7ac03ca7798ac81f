"""Where state lives: `db` (the service's database, SQLAlchemy Core: tables, engine,
migrations), `conversations` (chat-process memory in SQLite or Redis), `replies` (resumable
replies' logs in memory or Redis) and `startup` (the checks at start and in /healthz that the
stores and folders can be reached and written, and the wait for them).

Must not know: HTTP, any door, identity or money (they are built on top of it).
"""

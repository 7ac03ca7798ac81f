"""What requests may spend and what they came to: `budgets` (admission as one atomic
reservation, settlement, the sweep, the ledger and its check) and `usage` (what the ledger
adds up to, summed in the database, for the console and /api/usage). Prices are a setting
(`base.prices`).

Must not know: HTTP, any door, who the caller is beyond a user's and a key's id.
"""

"""magledger core: event types, the event store, parties and keys, configuration.

Nothing in this package knows about Flask or RQ; the HTTP app and the workers call into it.
"""

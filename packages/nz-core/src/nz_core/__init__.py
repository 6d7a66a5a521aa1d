"""neuronetz-gateway's control plane, as a library.

The pure domain (no I/O; a CI check proves it):

* :mod:`nz_core.keys`: key format, parsing, argon2id hashing and verification.
* :mod:`nz_core.scopes`: key scopes.
* :mod:`nz_core.residency`: ``keep_alive`` as Ollama reads it, and the residency policy.
* :mod:`nz_core.backends`: the Ollama nodes as values, and the ones the environment
  defines while none is stored.
* :mod:`nz_core.limits`: rate and concurrency limits with key → tenant inheritance.
* :mod:`nz_core.models`: model-name normalisation and effective model sets.
* :mod:`nz_core.budgets`: budget periods, the binding period, the prompt estimate.
* :mod:`nz_core.windows`: rate-window arithmetic.
* :mod:`nz_core.limiter`: the admission decision for one key, the one implementation
  the state stores run or are tested against.
* :mod:`nz_core.errors`: the error tree.

The control plane over the database:

* :mod:`nz_core.schema`: the tables.
* :mod:`nz_core.database`: engines for PostgreSQL and SQLite.
* :mod:`nz_core.migrations`: upgrading a database to the current schema.
* :mod:`nz_core.admin`: create tenants and keys, revoke, set limits, budgets, models
  and prompt logging, and query usage.
* :mod:`nz_core.backend_admin`: add, drain, activate and remove backends, set model
  policies, and read both at once for routing.
* :mod:`nz_core.credentials`: what the gateway reads to verify a key, in one query.
* :mod:`nz_core.changes`: the log of key changes that revocation catches up on.
* :mod:`nz_core.ledger`: the audit log and the budget ledger, written together.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

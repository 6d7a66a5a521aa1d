"""neuronetz-gateway's control plane, as a library.

The pure domain (no I/O; a CI check proves it):

* :mod:`nz_core.keys`: key format, parsing, argon2id hashing and verification.
* :mod:`nz_core.scopes`: key scopes.
* :mod:`nz_core.limits`: rate and concurrency limits with key → tenant inheritance.
* :mod:`nz_core.models`: model-name normalisation and effective model sets.
* :mod:`nz_core.budgets`: budget periods, the binding period, reservations.
* :mod:`nz_core.windows`: rate-window arithmetic, the reference model of the stores.
* :mod:`nz_core.errors`: the error tree.

The control plane over the database:

* :mod:`nz_core.schema`: the tables.
* :mod:`nz_core.database`: engines for PostgreSQL and SQLite.
* :mod:`nz_core.migrations`: upgrading a database to the current schema.
* :mod:`nz_core.admin`: create tenants and keys, revoke, set limits, budgets, models
  and prompt logging, and query usage.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

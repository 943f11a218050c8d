"""The shared library of the ourvidz services: settings, database, queue,
storage, identity, errors, the job catalog and the generated contracts.

Services import this package and never each other.
"""

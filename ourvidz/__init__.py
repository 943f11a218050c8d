"""The shared library of the ourvidz services: settings, database, queue,
storage, identity, errors, the job catalog and the generated contracts.

Services import this package and never each other.
"""

import os

# Weights are presets or local folders; the model hub is never reached. Set
# here, before any service imports huggingface_hub (its constants read these
# once), because every service imports this package first.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

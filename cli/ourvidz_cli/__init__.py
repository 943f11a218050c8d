"""The command line client of an ourvidz gateway (`ourvidz`): HTTP only, so it
installs without the server's dependencies (`pip install ./cli`)."""

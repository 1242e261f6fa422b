"""Error hierarchy. Library code raises these; only ``lowres.cli`` turns them into exit codes.

Every message is one line that names the problem and the fix.
"""


class LowresError(Exception):
    """Base class for every error lowres reports to a user (bad input, not a bug)."""


class DataError(LowresError):
    """A dataset, manifest, image or protocol file is missing, corrupt or inconsistent."""


class ConfigError(LowresError):
    """A setting is invalid: unknown method/model/kernel name, bad scale, bad FAR, ..."""


class CheckpointError(LowresError):
    """A checkpoint is missing, unsafe (pickle payload), or disagrees with its sidecar."""


class TrainingError(LowresError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class ResultsError(LowresError):
    """A results folder or baseline is missing, malformed, or made with other settings."""

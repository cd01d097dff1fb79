"""poisonlab: training-data poisoning attacks, detection, purification and defenses."""

import os as _os

# Before torch loads OpenMP: waiting threads sleep instead of spinning, so torch's threads do not stall each
# other when the cores are shared (benchmarks/results/threads.md). A value already set is kept; a process
# that imported torch before poisonlab keeps its own policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from poisonlab.errors import ConfigError, DataError, PoisonlabError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "PoisonlabError", "__version__"]

"""poisonlab: training-data poisoning attacks, detection, purification and defenses."""

from poisonlab.errors import ConfigError, DataError, PoisonlabError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "PoisonlabError", "__version__"]

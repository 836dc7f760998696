"""tve-suite: transferable vision explainers, reproduced offline-first."""

from .config import Profile, get_profile
from .studies.suite import Suite, seed_everything

__all__ = ["Profile", "Suite", "get_profile", "seed_everything"]
__version__ = "0.1.0"

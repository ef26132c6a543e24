"""Suite-wide settings: deterministic property tests that do not time out on a busy machine."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# Test helper modules (docvectors, roomkit, hostkit) sit beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile(
    "framesync",
    derandomize=True,  # the same examples every run, so any failure re-runs exactly
    deadline=None,  # wall-clock limits would make results depend on machine load
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("framesync")

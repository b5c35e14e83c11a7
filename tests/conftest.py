"""Shared fixtures: each stage keeps its own in tests/fixtures_<stage>.py, imported here."""
from fixtures_serve import *  # noqa: F401,F403
from fixtures_deploy import *  # noqa: F401,F403
from fixtures_export import *  # noqa: F401,F403
from fixtures_train import *  # noqa: F401,F403
from fixtures_docs import *  # noqa: F401,F403

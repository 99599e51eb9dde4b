"""pytest-jupyter's server fixtures (jp_fetch, jp_serverapp, ...) for these tests only.

Imported here rather than named in the root conftest's ``pytest_plugins``: the
plugin's autouse fixtures (a fresh event loop and a ServerApp clean-up around
every test) and its test-call hooks then apply to this directory alone, not
to the rest of the suite.
"""

from pytest_jupyter.jupyter_server import *  # noqa: F403

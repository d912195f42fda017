"""What the platform and the hospital nodes must agree on.

Pure Python: imports neither Django nor the node runtime (torch). Both sides import it.
"""

PROTOCOL_VERSION = 1
SOFTWARE_VERSION = "0.1.0"

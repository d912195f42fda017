"""Hospital node: the daemon and CLI a hospital runs next to its data.

It talks to the platform over outbound HTTPS only, enforces the hospital's own
consent, limits and privacy budget locally, and never imports Django.
"""

from fedproto import SOFTWARE_VERSION

NODE_VERSION = SOFTWARE_VERSION

__all__ = ["NODE_VERSION"]

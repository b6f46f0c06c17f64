"""Whether the model hub can be reached at all, asked before loading so that an offline machine fails at once.

The hub client (huggingface_hub) retries a failed request with backoff (1, 2, 4, 8 and 8 s): right
for a busy server, wrong for a host name that does not resolve, which no retry mends. Offline, the
README's first command printed five retry warnings and failed after 31 s. The client has no
setting for its retries, but it has one for not asking the network: ``local_files_only``. Loading
passes it where the hub's host name does not resolve, so a model in the local cache still loads
and any other fails at once with pnp's own message.
"""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit


def hub_unreachable() -> bool:
    """Whether the model hub certainly cannot be reached: offline mode is on, or its host name does not resolve.

    Behind a proxy the proxy resolves the name, so the answer is then False: the client finds out.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname
    if not host or _proxied(endpoint.scheme, host):
        return False
    try:
        socket.getaddrinfo(host, endpoint.port or endpoint.scheme, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return True
    return False


def hub_host() -> str:
    """The model hub's host name, as the user configured it (HF_ENDPOINT)."""
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends requests to ``host`` through a proxy (HTTPS_PROXY, ALL_PROXY, ... and NO_PROXY)."""
    proxies = urllib.request.getproxies()
    return (scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host)

"""The request runtime: what serves a call whatever speaks HTTP (no web framework here).

`Gateway` holds the model targets, their plugin chains and the shared services;
`serve_call` turns one request into a Call, runs it through its model's chain and on to
an upstream; `PluginHost` is what plugins get to work with.
"""

from gateway.runtime.gateway import BACKEND, UPSTREAM_SECONDS, Gateway
from gateway.runtime.host import PluginHost
from gateway.runtime.serve import Incoming, serve_call

__all__ = ["BACKEND", "UPSTREAM_SECONDS", "Gateway", "Incoming", "PluginHost", "serve_call"]

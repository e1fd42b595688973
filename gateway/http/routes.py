"""What each path answers. Generation and JSON endpoints go through the runtime
(gateway/runtime/serve.py); every other path under /v1 is forwarded to the upstream of
the request's model, whatever it is (`/v1/moderations`, `/v1/audio/*`, `/v1/images/*`,
`/v1/rerank`, ...), with auth, tenants, the plugin chain (routing, retries) and
metrics as for chat.

    POST /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings
    GET  /v1/models, /v1/models/{id}
    GET|DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items  (stored responses)
    *    /v1/...                    forwarded by model
    GET  /health, /ready (gateway/http/probes.py), /metrics
    POST /tokenize, /detokenize, GET /tokenizer_info  (engine models; tokenizer_routes.py)
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from gateway.call import CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH, RESPONSES, Reply
from gateway.errors import MethodNotAllowed, NotFound, Unauthorized
from gateway.http.probes import Probes
from gateway.http.tokenizer_routes import PATHS as TOKENIZER_PATHS
from gateway.http.tokenizer_routes import serve_tokenizer
from gateway.payload import Payload
from gateway.runtime import Gateway, Incoming, serve_call

ENDPOINTS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/embeddings": EMBEDDINGS,
}
API = "/v1"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Routes:
    def __init__(
        self,
        gateway: Gateway,
        metrics: Callable[[], bytes] | None,
        admin_key: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        # With an admin key, /metrics and the probes' detail (backend names and URLs, the
        # store's errors) are for callers that send it; the probes' status stays open
        # for load balancers and orchestrators.
        self.admin_key = admin_key
        self.probes = Probes(gateway)

    async def dispatch(self, incoming: Incoming) -> tuple[Reply, str]:
        """The reply and the endpoint that made it; raises OpenAIError."""
        path, method = incoming.path, incoming.method
        endpoint = ENDPOINTS.get(path)
        if endpoint is not None:
            _method(incoming, "POST")
            return await serve_call(self.gateway, endpoint, incoming), endpoint
        if path == "/v1/models" or path.startswith("/v1/models/"):
            _method(incoming, "GET")
            return self._models(incoming), "models"
        if path.startswith("/v1/responses/"):
            return await self._stored_response(incoming), RESPONSES
        if path.startswith(API + "/"):
            return await serve_call(self.gateway, PASSTHROUGH, _forwarded(incoming)), PASSTHROUGH
        if path in TOKENIZER_PATHS:
            _method(incoming, "GET" if path == "/tokenizer_info" else "POST")
            return serve_tokenizer(self.gateway, incoming), "tokenizer"
        if path == "/health":
            _method(incoming, "GET")
            return self.probes.health(self._is_admin(incoming)), "health"
        if path == "/ready":
            _method(incoming, "GET")
            return await self.probes.ready(self._is_admin(incoming)), "ready"
        if path == "/metrics" and self.metrics is not None:
            _method(incoming, "GET")
            if not self._is_admin(incoming):
                raise Unauthorized("/metrics needs the admin key: 'Authorization: Bearer KEY'.")
            return Reply(content=_once(self.metrics()), media_type=PROMETHEUS), "metrics"
        raise NotFound(f"No route for {method} {path}.")

    def _models(self, incoming: Incoming) -> Reply:
        gw = self.gateway
        gw.auth.tenant(incoming.headers.get("authorization"))
        names = [*gw.models(), *sorted(gw.embedder_names - set(gw.models()))]
        if incoming.path == "/v1/models":
            cards = [_card(name, gw.started) for name in names]
            return Reply(body=Payload.of({"object": "list", "data": cards}))
        name = incoming.path[len("/v1/models/") :]
        if name not in names:
            gw.target(name)  # 404 in OpenAI's shape
        return Reply(body=Payload.of(_card(name, gw.started)))

    async def _stored_response(self, incoming: Incoming) -> Reply:
        """A response the gateway made (over chat, for the engine) is served from its
        store; one an upstream made goes back to that upstream, by the model it was
        made for (noted as it passed through)."""
        gw = self.gateway
        tenant = gw.auth.tenant(incoming.headers.get("authorization"))
        assert gw.responses is not None
        rest = incoming.path[len("/v1/responses/") :]
        response_id, _, tail = rest.partition("/")
        model = await gw.responses.owner(tenant, response_id)
        if model is not None and model in gw.targets:
            return await serve_call(gw, PASSTHROUGH, _forwarded(incoming), model)
        if incoming.method == "GET" and tail in ("", "input_items"):
            return await gw.responses.retrieve(tenant, response_id, input_items=tail != "")
        if incoming.method == "DELETE" and not tail:
            return await gw.responses.delete(tenant, response_id)
        raise MethodNotAllowed(incoming.method, incoming.path)

    def _is_admin(self, incoming: Incoming) -> bool:
        if self.admin_key is None:
            return True
        sent = incoming.headers.get("authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {self.admin_key}".encode())


def _forwarded(incoming: Incoming) -> Incoming:
    """The request with its path made relative to the API base (upstream URLs end in /v1)."""
    return Incoming(
        method=incoming.method,
        path=incoming.path[len(API) :],
        query=incoming.query,
        headers=incoming.headers,
        body=incoming.body,
        request_id=incoming.request_id,
    )


def _method(incoming: Incoming, allowed: str) -> None:
    if incoming.method != allowed:
        raise MethodNotAllowed(incoming.method, incoming.path)


def _card(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway"}


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data

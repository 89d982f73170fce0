"""The server's Prometheus metrics, in a registry of their own (one per server, shared by the models it switches between)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Requests, latency, batch sizes, queue depth, images and the model served: `Metrics().requests.labels(...)`.

    Requests and images carry `model_sha256`, the model that answered: during a switch both models answer.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ganops_requests_total", "HTTP requests by route, method, status and the model that answered",
            ["endpoint", "method", "status", "model_sha256"], registry=self.registry,
        )
        self.latency = Histogram(
            "ganops_request_latency_seconds", "HTTP request latency by route", ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ganops_batch_size", "images per ONNX Runtime call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ganops_queue_depth", "requests waiting for the generator", registry=self.registry
        )
        self.images = Counter("ganops_images_total", "images generated, by model", ["model_sha256"],
                              registry=self.registry)
        self.model = Gauge("ganops_model_info", "1 for the model served now, with where it came from",
                           ["model_sha256", "source"], registry=self.registry)
        self.reloads = Counter("ganops_model_reloads_total", "reloads (SIGHUP, POST /admin/reload) by outcome: "
                               "switched, unchanged (the same model), failed (the old model stays)",
                               ["outcome"], registry=self.registry)

    def observe(self, endpoint: str, method: str, status: int, seconds: float, model_sha256: str) -> None:
        """One finished request, labelled by its route template (never its raw path) and the model that answered."""
        self.requests.labels(endpoint, method, str(status), model_sha256).inc()
        self.latency.labels(endpoint).observe(seconds)

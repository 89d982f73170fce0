"""The server's Prometheus metrics, in a registry of their own (one per app)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Requests, latency, batch sizes, queue depth and images: `Metrics().requests.labels(...)`."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ganops_requests_total", "HTTP requests by route, method and status",
            ["endpoint", "method", "status"], registry=self.registry,
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
        self.images = Counter("ganops_images_total", "images generated", registry=self.registry)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One finished request, labelled by its route template (never its raw path)."""
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

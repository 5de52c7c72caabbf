"""A vLLM-shaped /metrics server made of the real Python parts vLLM uses.

The `vllm:` families of a vLLM exposition (a fixture file) are rebuilt as
real prometheus_client Counters, Gauges and Histograms with the same names,
types, label sets, buckets and values, then served by FastAPI under uvicorn
wired the way vLLM wires its metrics:

* `--wiring current` (vLLM >= 0.9): prometheus-fastapi-instrumentator's
  `GET /metrics` route first, then prometheus_client's `make_asgi_app`
  mounted for every path matching `^/metrics(?P<path>.*)$`. Starlette tries
  routes in order, so `/metrics` reaches the instrumentator and `/metrics/`
  the ASGI app.
* `--wiring asgi` (older vLLM): only the ASGI app, on both paths.

As in vLLM, `PROMETHEUS_MULTIPROC_DIR` in the environment selects
multi-process mode: the values are written to that directory by
`--writers` separate processes (counters and histogram counts split between
them, gauges in "mostrecent" mode set by each), as vLLM's API server
processes do, and the served registry is a fresh CollectorRegistry holding
only a MultiProcessCollector. Without it the metrics live in the process's
default REGISTRY (with its python_/process_ collectors), like one vLLM API
server.

Prints `listening on http://HOST:PORT` once it accepts connections. By hand:

    PYTHONPATH=$(scripts/fetch-python-exporter) python3 tests/exporter/vllm_metrics.py \
      --fixture ../shared/fixtures/metrics/vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom --port 8000
"""

import argparse
import math
import multiprocessing
import os
import re
import socket

import prometheus_client
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import Counter, Gauge, Histogram, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.routing import Mount

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# The handlers vLLM keeps out of the instrumentator's request metrics.
UNINSTRUMENTED = ["/metrics", "/health", "/health/decode", "/load", "/ping", "/version", "/server_info"]


class PrometheusText(Response):
    """The instrumentator's route answers in the text format, not JSON."""

    media_type = prometheus_client.CONTENT_TYPE_LATEST


def vllm_families(fixture_text):
    """The `vllm:` families of an exposition, without the `_created`
    gauges that prometheus_client writes by itself."""
    families = [f for f in text_string_to_metric_families(fixture_text) if f.name.startswith("vllm:")]
    bases = {f.name for f in families if f.type in ("counter", "histogram")}
    return [f for f in families if not (f.name.endswith("_created") and f.name[: -len("_created")] in bases)]


def label_names(family):
    return sorted({k for s in family.samples for k in s.labels if k != "le"})


def series_key(labels):
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def share(value, writer, writers):
    """Writer `writer`'s part of `value`: whole numbers are split evenly,
    other values go whole to writer 0, so the parts add up exactly."""
    if value == int(value):
        part, rest = divmod(int(value), writers)
        return part + (1 if writer < rest else 0)
    return value if writer == 0 else 0.0


def write_values(families, writer=0, writers=1):
    """Registers the families in the default REGISTRY and sets this
    writer's share of each value."""
    for family in families:
        names = label_names(family)
        if family.type == "gauge":
            gauge = Gauge(family.name, family.documentation, names, multiprocess_mode="mostrecent")
            for s in family.samples:
                gauge.labels(**s.labels).set(s.value)
        elif family.type == "counter":
            counter = Counter(family.name, family.documentation, names)
            for s in family.samples:
                if s.name.endswith("_total"):
                    counter.labels(**s.labels).inc(share(s.value, writer, writers))
        elif family.type == "histogram":
            write_histogram(family, names, writer, writers)
        else:
            raise ValueError(f"{family.name}: no {family.type} in vLLM's exposition")


def write_histogram(family, names, writer, writers):
    bounds = sorted({float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")})
    histogram = Histogram(family.name, family.documentation, names, buckets=bounds)
    cumulative, sums = {}, {}
    for s in family.samples:
        key = series_key(s.labels)
        if s.name.endswith("_bucket"):
            cumulative.setdefault(key, {})[float(s.labels["le"])] = s.value
        elif s.name.endswith("_sum"):
            sums[key] = s.value
    if not math.isinf(bounds[-1]):
        bounds.append(math.inf)
    for key, by_bound in cumulative.items():
        child = histogram.labels(**dict(key))
        # A histogram takes observations, not counts: set its per-bucket
        # counts and sum directly so the text is the fixture's.
        previous = 0.0
        for bucket, bound in zip(child._buckets, bounds):
            bucket.inc(share(by_bound[bound] - previous, writer, writers))
            previous = by_bound[bound]
        child._sum.inc(share(sums[key], writer, writers))


def registry():
    """The registry vLLM serves: its own in one process, a fresh one reading
    every process's files in multi-process mode."""
    if not MULTIPROCESS:
        return prometheus_client.REGISTRY
    merged = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def app(wiring):
    served = registry()
    api = FastAPI()
    if wiring == "current":
        instrumentator = Instrumentator(excluded_handlers=UNINSTRUMENTED, registry=served)
        instrumentator.add().instrument(api).expose(api, response_class=PrometheusText)
    exposition = Mount("/metrics", prometheus_client.make_asgi_app(registry=served))
    # Without this the mount answers `/metrics` with a redirect to `/metrics/`.
    exposition.path_regex = re.compile("^/metrics(?P<path>.*)$")
    api.routes.append(exposition)
    return api


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started:
            host, port = sockets[0].getsockname()[:2]
            print(f"listening on http://{host}:{port}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", required=True, help="a vLLM exposition to imitate")
    parser.add_argument("--wiring", choices=["current", "asgi"], default="current")
    parser.add_argument("--writers", type=int, default=2, help="processes writing values (multi-process mode)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()

    with open(args.fixture, encoding="utf-8") as f:
        families = vllm_families(f.read())
    if MULTIPROCESS:
        # Forked before any metric exists, so each writer has files of its own.
        writers = [
            multiprocessing.get_context("fork").Process(target=write_values, args=(families, i, args.writers))
            for i in range(args.writers)
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
            if w.exitcode != 0:
                raise SystemExit(f"a writer process exited with {w.exitcode}")
    else:
        write_values(families)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    config = uvicorn.Config(app(args.wiring), log_level="warning", access_log=False)
    Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()

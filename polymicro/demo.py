"""Demo data: a few projects with their services, days of logs and CPU metrics.

Used by ``flask --app polymicro seed-demo`` (see ``cli.py``); plain functions so tests
can call them directly.

- Projects and services are created through the service layer, so its rules apply.
- Logs and CPU points are generated per service and written in bulk, straight through
  the documents (``insert`` in chunks), never one at a time.
- Everything is idempotent: demo projects are found by name and reused, a service's
  logs and points are written only when it has none, its metrics entry only when missing.
- Every random choice comes from a ``random.Random`` seeded with ``seed`` and the
  project and service names, so one service's data does not depend on which other
  services already existed: the same seed and ``now`` give the same data.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bson import ObjectId

from polymicro.common.models import name_key
from polymicro.common.timeutil import truncate_ms, utcnow
from polymicro.logs.models import SEVERITIES, SEVERITY_LEVEL, LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.projects import service as projects
from polymicro.projects.models import Project
from polymicro.services import service as services
from polymicro.services.models import Service

log = logging.getLogger(__name__)

DEFAULT_DAYS = 3
DEFAULT_SEED = 42
POINT_INTERVAL = timedelta(minutes=15)
POINTS_PER_DAY = int(timedelta(days=1) / POINT_INTERVAL)
CHUNK_SIZE = 1000
HIGH_LOAD = 85.0  # a point at or above this load also gets a "high CPU" warning log


# --- the catalog ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    domain: str  # selects the extra message templates (see DOMAIN_TEMPLATES)
    description: str
    port: int
    version: str
    status: str
    health: str
    tags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ("/healthz",)  # request paths ({id} is filled in)
    deps: tuple[str, ...] = ("mongodb",)  # what it calls
    log_rate: float = 4.0  # logs per hour at the daily peak
    cpu_base: float = 20.0  # typical load (%) at the daily peak
    mem_base: float = 30.0  # memory (%) right after a restart
    mem_growth: float = 0.0  # memory (%) gained per hour since the last restart (a leak)
    threads: int = 8


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    slug: str
    owner: str
    description: str
    tags: tuple[str, ...]
    services: tuple[ServiceSpec, ...]


CATALOG: tuple[ProjectSpec, ...] = (
    ProjectSpec(
        name="Storefront Platform",
        slug="storefront",
        owner="maria.garcia",
        description="Customer-facing web shop: product catalog, cart, checkout and "
        "order notifications.",
        tags=("ecommerce", "production", "customer-facing"),
        services=(
            ServiceSpec(
                name="api-gateway",
                domain="gateway",
                description="Edge gateway: routing, rate limiting and authentication.",
                port=8080,
                version="3.8.2",
                status="Running",
                health="Healthy",
                tags=("edge", "nginx"),
                paths=(
                    "/api/products",
                    "/api/products/{id}",
                    "/api/cart",
                    "/api/checkout",
                    "/api/orders/{id}",
                    "/healthz",
                ),
                deps=("catalog-service", "cart-service", "payment-service", "auth-service"),
                log_rate=12,
                cpu_base=35,
                mem_base=28,
                threads=32,
            ),
            ServiceSpec(
                name="catalog-service",
                domain="catalog",
                description="Products, prices and stock levels.",
                port=8081,
                version="2.14.0",
                status="Running",
                health="Healthy",
                tags=("python", "mongodb"),
                paths=("/products", "/products/{id}", "/categories", "/products/{id}/stock"),
                deps=("mongodb", "redis", "search-indexer"),
                log_rate=8,
                cpu_base=22,
                mem_base=41,
                threads=16,
            ),
            ServiceSpec(
                name="cart-service",
                domain="cart",
                description="Shopping carts and their reservations.",
                port=8082,
                version="1.9.3",
                status="Running",
                health="Warning",
                tags=("go", "redis"),
                paths=("/carts/{id}", "/carts/{id}/items", "/carts/{id}/items/{id}"),
                deps=("redis", "catalog-service"),
                log_rate=6,
                cpu_base=18,
                mem_base=35,
                mem_growth=0.45,
                threads=12,
            ),
            ServiceSpec(
                name="payment-service",
                domain="payments",
                description="Card payments and refunds through the payment provider.",
                port=8083,
                version="4.2.1",
                status="Running",
                health="Degraded",
                tags=("java", "pci"),
                paths=("/payments", "/payments/{id}", "/refunds"),
                deps=("stripe-api", "postgres", "fraud-check"),
                log_rate=6,
                cpu_base=30,
                mem_base=55,
                threads=48,
            ),
            ServiceSpec(
                name="notification-worker",
                domain="notify",
                description="Sends order e-mails and push notifications from the queue.",
                port=9090,
                version="1.3.0",
                status="Unknown",
                health="Unknown",
                tags=("worker", "rabbitmq"),
                deps=("rabbitmq", "smtp-relay", "push-gateway"),
                log_rate=5,
                cpu_base=10,
                mem_base=22,
                threads=6,
            ),
        ),
    ),
    ProjectSpec(
        name="Identity & Access",
        slug="identity",
        owner="jonas.weber",
        description="Sign-in, user directory and API tokens shared by every product.",
        tags=("security", "production"),
        services=(
            ServiceSpec(
                name="auth-service",
                domain="auth",
                description="Password and SSO sign-in, sessions.",
                port=8443,
                version="5.0.4",
                status="Running",
                health="Healthy",
                tags=("python", "oauth2"),
                paths=("/login", "/logout", "/sessions/{id}", "/oauth/authorize"),
                deps=("user-directory", "redis"),
                log_rate=9,
                cpu_base=20,
                mem_base=33,
                threads=24,
            ),
            ServiceSpec(
                name="user-directory",
                domain="users",
                description="User profiles, groups and roles.",
                port=8444,
                version="2.7.1",
                status="Running",
                health="Healthy",
                tags=("python", "postgres"),
                paths=("/users/{id}", "/users", "/groups/{id}/members"),
                deps=("postgres",),
                log_rate=5,
                cpu_base=12,
                mem_base=38,
                threads=16,
            ),
            ServiceSpec(
                name="token-issuer",
                domain="auth",
                description="Issues and rotates API tokens and signing keys.",
                port=8445,
                version="1.12.0",
                status="Starting",
                health="Unknown",
                tags=("go", "jwt"),
                paths=("/tokens", "/tokens/{id}", "/.well-known/jwks.json"),
                deps=("vault", "postgres"),
                log_rate=4,
                cpu_base=8,
                mem_base=18,
                threads=8,
            ),
            ServiceSpec(
                name="audit-trail",
                domain="audit",
                description="Append-only record of security-relevant events.",
                port=8446,
                version="0.9.8",
                status="Running",
                health="Warning",
                tags=("kafka", "compliance"),
                deps=("kafka", "s3"),
                log_rate=4,
                cpu_base=15,
                mem_base=46,
                threads=10,
            ),
        ),
    ),
    ProjectSpec(
        name="Data Pipeline",
        slug="pipeline",
        owner="priya.natarajan",
        description="Collects click and order events, aggregates them and loads the "
        "warehouse for the nightly reports.",
        tags=("analytics", "batch", "internal"),
        services=(
            ServiceSpec(
                name="ingest-collector",
                domain="ingest",
                description="Receives events over HTTP and writes them to Kafka.",
                port=7001,
                version="2.3.5",
                status="Running",
                health="Healthy",
                tags=("rust", "kafka"),
                paths=("/events", "/events/batch"),
                deps=("kafka",),
                log_rate=10,
                cpu_base=40,
                mem_base=25,
                threads=20,
            ),
            ServiceSpec(
                name="stream-processor",
                domain="stream",
                description="Sessionises and enriches the event stream.",
                port=7002,
                version="3.1.0",
                status="Error",
                health="Critical",
                tags=("flink", "kafka"),
                deps=("kafka", "redis", "geoip"),
                log_rate=6,
                cpu_base=45,
                mem_base=60,
                threads=24,
            ),
            ServiceSpec(
                name="warehouse-loader",
                domain="loader",
                description="Loads hourly partitions into the warehouse.",
                port=7003,
                version="1.6.2",
                status="Running",
                health="Warning",
                tags=("python", "bigquery"),
                deps=("bigquery", "s3"),
                log_rate=3,
                cpu_base=25,
                mem_base=40,
                threads=6,
            ),
            ServiceSpec(
                name="scheduler",
                domain="scheduler",
                description="Cron-style scheduling of pipeline jobs.",
                port=7004,
                version="2.0.0",
                status="Running",
                health="Healthy",
                tags=("airflow",),
                deps=("postgres", "warehouse-loader", "report-builder"),
                log_rate=3,
                cpu_base=8,
                mem_base=30,
                threads=8,
            ),
            ServiceSpec(
                name="report-builder",
                domain="reports",
                description="Renders the nightly PDF and CSV reports.",
                port=7005,
                version="1.1.4",
                status="Stopped",
                health="Unknown",
                tags=("python", "batch"),
                deps=("bigquery", "s3"),
                log_rate=2,
                cpu_base=12,
                mem_base=20,
                threads=4,
            ),
        ),
    ),
    ProjectSpec(
        name="Developer Portal",
        slug="devportal",
        owner="tom.okafor",
        description="Internal documentation site, API search and feature flags for "
        "engineering teams.",
        tags=("internal", "docs"),
        services=(
            ServiceSpec(
                name="docs-site",
                domain="docs",
                description="Static documentation site with server-side search.",
                port=3000,
                version="6.4.0",
                status="Running",
                health="Healthy",
                tags=("node", "nextjs"),
                paths=("/", "/docs/{id}", "/api/search", "/assets/app.js"),
                deps=("search-indexer",),
                log_rate=5,
                cpu_base=10,
                mem_base=36,
                threads=10,
            ),
            ServiceSpec(
                name="search-indexer",
                domain="search",
                description="Builds the full-text index of docs and API references.",
                port=9200,
                version="8.11.3",
                status="Running",
                health="Degraded",
                tags=("elasticsearch",),
                paths=("/_search", "/docs/_doc/{id}", "/_bulk"),
                deps=("elasticsearch",),
                log_rate=4,
                cpu_base=28,
                mem_base=62,
                mem_growth=0.15,
                threads=28,
            ),
            ServiceSpec(
                name="feature-flags",
                domain="flags",
                description="Feature flag evaluation for every service.",
                port=4242,
                version="0.21.7",
                status="Running",
                health="Healthy",
                tags=("go",),
                paths=("/flags", "/flags/{id}", "/evaluate"),
                deps=("redis",),
                log_rate=4,
                cpu_base=6,
                mem_base=15,
                threads=6,
            ),
        ),
    ),
)


# --- a service's timeline ------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """When the things a service's status implies happened (all naive UTC, ms)."""

    deployed_at: datetime  # the last deployment (the logs show its start-up)
    stopped_at: datetime | None = None  # Stopped: no logs, zero load after this
    silent_since: datetime | None = None  # Unknown: the logs stop here (no heartbeat)
    failing_since: datetime | None = None  # Error: crash-looping since then

    @property
    def logs_until(self) -> datetime | None:
        return self.stopped_at or self.silent_since


def service_rng(seed: int, project: ProjectSpec, spec: ServiceSpec, part: str) -> random.Random:
    """An independent, reproducible generator for one part of one service's data."""
    return random.Random(f"{seed}/{project.name}/{spec.name}/{part}")


def plan_timeline(rng: random.Random, status: str, now: datetime) -> Timeline:
    def ago(**delta: float) -> datetime:
        return truncate_ms(now - timedelta(**delta))

    if status == "Starting":
        return Timeline(deployed_at=ago(seconds=rng.uniform(20, 240)))
    if status == "Stopped":
        stopped = ago(hours=rng.uniform(3, 20))
        return Timeline(
            deployed_at=truncate_ms(stopped - timedelta(hours=rng.uniform(24, 24 * 12))),
            stopped_at=stopped,
        )
    if status == "Error":
        failing = ago(hours=rng.uniform(1, 5))
        # a bad deployment shortly before the failures started
        return Timeline(
            deployed_at=truncate_ms(failing - timedelta(minutes=rng.uniform(2, 30))),
            failing_since=failing,
        )
    if status == "Unknown":
        return Timeline(
            deployed_at=ago(hours=rng.uniform(24, 24 * 14)),
            silent_since=ago(hours=rng.uniform(0.5, 6)),
        )
    return Timeline(deployed_at=ago(hours=rng.uniform(5, 24 * 9)))  # Running


def format_uptime(delta: timedelta) -> str:
    total = max(0, int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def daily_rhythm(t: datetime) -> float:
    """0 at 02:00 UTC, 1 at 14:00 UTC: a sine over 24 hours."""
    hours = t.hour + t.minute / 60 + t.second / 3600
    return 0.5 + 0.5 * math.sin(2 * math.pi * (hours - 8) / 24)


# --- CPU points ----------------------------------------------------------------------


def point_times(now: datetime, days: int) -> list[datetime]:
    """``days × 96`` quarter hours, oldest first, the last one at or before ``now``."""
    last = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    count = days * POINTS_PER_DAY
    return [last - (count - 1 - i) * POINT_INTERVAL for i in range(count)]


def generate_points(
    metric_id: ObjectId | None,
    spec: ServiceSpec,
    timeline: Timeline,
    rng: random.Random,
    times: list[datetime],
) -> list[CpuPoint]:
    """One point per time: daily rhythm, noise, occasional spikes, a leak where the spec
    has one; zero after a stop, erratic while crash-looping."""
    points = []
    spike_left, spike_extra = 0, 0.0
    first = times[0] if times else None
    for t in times:
        if timeline.stopped_at and t >= timeline.stopped_at:
            load, memory, threads = 0.0, 0.0, 0
        elif timeline.failing_since and t >= timeline.failing_since:
            # restarts: sometimes caught while booting (hot), sometimes just after a crash
            load = rng.uniform(75, 99) if rng.random() < 0.5 else rng.uniform(0, 8)
            memory = rng.uniform(88, 99.5)
            threads = rng.randint(0, spec.threads)
        else:
            rhythm = daily_rhythm(t)
            load = spec.cpu_base * (0.35 + 0.85 * rhythm) + rng.gauss(0, spec.cpu_base * 0.08)
            if spike_left:
                spike_left -= 1
                load += spike_extra
            elif rng.random() < 0.012:
                spike_left, spike_extra = rng.randint(0, 3), rng.uniform(35, 65)
                load += spike_extra
            restart = timeline.deployed_at if t >= timeline.deployed_at else first
            hours_up = (t - restart).total_seconds() / 3600
            memory = spec.mem_base + spec.mem_growth * hours_up + 4 * rhythm + rng.gauss(0, 1.2)
            threads = spec.threads + round(load / 8) + rng.randint(-2, 2)
        points.append(
            CpuPoint(
                metric_id=metric_id,
                time=t,
                load=round(min(max(load, 0.0), 100.0), 2),
                memory=round(min(max(memory, 0.0), 100.0), 1),
                threads=max(0, int(threads)),
            )
        )
    return points


# --- logs ----------------------------------------------------------------------------

# Share of each severity by the service's health (debug, info, warn, error, critical).
SEVERITY_WEIGHTS = {
    "Healthy": (0.30, 0.60, 0.075, 0.02, 0.005),
    "Warning": (0.28, 0.56, 0.12, 0.035, 0.005),
    "Degraded": (0.26, 0.52, 0.14, 0.07, 0.01),
    "Critical": (0.22, 0.50, 0.16, 0.10, 0.02),
    "Unknown": (0.30, 0.58, 0.09, 0.025, 0.005),
}
FAILING_WEIGHTS = (0.10, 0.35, 0.22, 0.27, 0.06)  # while crash-looping

# (message template, logger) by severity; ``{…}`` are filled by FILLERS.
HTTP_TEMPLATES = {
    "debug": [
        ("Request headers parsed for {method} {path} (content-length {size})", "http"),
        ("Routing {method} {path} to handler", "http.router"),
    ],
    "info": [
        ("{method} {path} {ok_status} in {ms} ms", "http.access"),
        ("{method} {path} {ok_status} in {ms} ms", "http.access"),
        ("{method} {path} {ok_status} in {ms} ms", "http.access"),
        ("{method} {path} {client_status} in {ms} ms", "http.access"),
    ],
    "warn": [
        ("Slow request: {method} {path} took {slow_ms} ms", "http.access"),
        ("Rate limit reached for client {client}: 429 on {path}", "http.ratelimit"),
    ],
    "error": [
        ("{method} {path} 500 in {ms} ms: upstream {dep} returned 503", "http.access"),
        ("Unhandled exception in {method} {path}: KeyError: 'customer_id'", "http.server"),
    ],
}
WORKER_TEMPLATES = {
    "info": [
        ("Processed batch of {count} messages in {ms} ms", "worker.consumer"),
        ("Job {job_id} completed in {seconds} s", "worker.jobs"),
    ],
    "warn": [("Consumer lag is {lag} messages on partition {partition}", "worker.consumer")],
    "error": [("Failed to process message {msg_id}: ValidationError: missing 'id'", "worker")],
}
COMMON_TEMPLATES = {
    "debug": [
        ("Cache hit for key {cache_key}", "cache"),
        ("Cache miss for key {cache_key}; loading from {dep}", "cache"),
        ("Query on {collection} took {ms} ms ({count} documents)", "db"),
        ("Call to {dep} took {ms} ms", "client"),
        ("Connection pool: {used} in use, {idle} idle", "db.pool"),
        ("Feature flag {flag} evaluated to {flag_value}", "flags"),
    ],
    "info": [
        ("Health check passed ({ms} ms)", "health"),
        ("Configuration reloaded ({count} keys)", "config"),
        ("Refreshed {count} entries of the {collection} cache", "cache"),
    ],
    "warn": [
        ("Retrying call to {dep} (attempt {attempt}/3) after timeout", "client"),
        ("Connection pool near capacity: {pool_used}/50 in use", "db.pool"),
        ("GC pause of {gc_ms} ms", "runtime"),
        ("Certificate for {dep} expires in {cert_days} days", "tls"),
    ],
    "error": [
        ("Timeout after 5000 ms calling {dep}", "client"),
        ("Lost connection to {dep}; reconnecting", "client"),
        ("Write to {collection} failed: WriteConcernError (wtimeout)", "db"),
    ],
    "critical": [
        ("Database connection lost: no primary available for writes", "db"),
        ("Circuit breaker OPEN for {dep}: {percent}% of calls failing", "client"),
        ("Disk usage at {disk}% on /var/lib/{service}", "runtime"),
    ],
}
DOMAIN_TEMPLATES = {
    "gateway": {
        "info": [("Proxied {method} {path} to {dep} in {ms} ms", "proxy")],
        "warn": [("Upstream {dep} marked unhealthy after 3 failed probes", "proxy")],
    },
    "catalog": {
        "info": [("Price update applied to {count} products", "pricing")],
        "warn": [("Stock for SKU {sku} below threshold ({stock} left)", "stock")],
    },
    "cart": {
        "info": [("Cart {cart_id} updated: {items} items, total {amount} EUR", "carts")],
        "warn": [("Reservation for cart {cart_id} expired; items released", "carts")],
    },
    "payments": {
        "info": [
            ("Payment {payment_id} authorised: {amount} EUR", "payments"),
            ("Refund {payment_id} completed: {amount} EUR", "refunds"),
        ],
        "warn": [("Payment {payment_id} declined by issuer: insufficient funds", "payments")],
        "error": [("Provider timeout for payment {payment_id}; will retry", "payments")],
    },
    "notify": {
        "info": [("Sent order confirmation e-mail for order {order_id}", "mail")],
        "warn": [("Push token for user {user} rejected by gateway; removed", "push")],
    },
    "auth": {
        "info": [
            ("User {user} signed in (method: {login_method})", "auth"),
            ("Token refreshed for user {user}", "tokens"),
        ],
        "warn": [("Failed sign-in for user {user} from {ip}: invalid password", "auth")],
        "error": [("Signing key rotation failed: vault returned 403", "keys")],
    },
    "users": {
        "info": [("Profile of user {user} updated ({count} fields)", "users")],
    },
    "audit": {
        "info": [("Appended {count} audit events to segment {partition}", "audit")],
        "warn": [("Audit segment upload to s3 retried ({attempt}/3)", "audit")],
    },
    "ingest": {
        "info": [("Accepted batch of {count} events from {client}", "ingest")],
        "warn": [("Dropped {items} malformed events from {client}", "ingest")],
    },
    "stream": {
        "info": [("Window {partition} closed: {count} sessions emitted", "stream")],
        "error": [("Checkpoint {job_id} failed: state backend unavailable", "stream")],
    },
    "loader": {
        "info": [("Loaded partition {partition} ({count} rows) in {seconds} s", "loader")],
        "warn": [("Partition {partition} arrived late; load delayed", "loader")],
    },
    "scheduler": {
        "info": [("Triggered job {job_id} ({dep})", "scheduler")],
        "warn": [("Job {job_id} missed its schedule by {seconds} s", "scheduler")],
    },
    "reports": {
        "info": [("Rendered report {job_id} ({count} pages)", "reports")],
    },
    "docs": {
        "info": [("Served {path} from cache", "static")],
    },
    "search": {
        "info": [("Indexed {count} documents in {ms} ms", "indexer")],
        "warn": [("Shard {partition} relocating; search results may be partial", "cluster")],
    },
    "flags": {
        "info": [("Flag {flag} changed by {user}", "flags")],
    },
}
HTTP_DOMAINS = {
    "gateway",
    "catalog",
    "cart",
    "payments",
    "auth",
    "users",
    "ingest",
    "docs",
    "search",
    "flags",
}

USERS = ("alice", "bob", "chen", "dana", "emre", "fatima", "gus", "hana", "ivan", "julia")
CLIENTS = ("web-app", "ios-app", "android-app", "partner-acme", "internal-bi")
FLAGS = ("new-checkout", "dark-mode", "search-v2", "one-click-pay", "beta-reports")
COLLECTIONS = ("orders", "products", "users", "sessions", "events", "carts")

FILLERS: dict[str, Callable[[random.Random, ServiceSpec], object]] = {
    "method": lambda r, s: r.choice(("GET",) * 6 + ("POST", "POST", "PUT", "DELETE")),
    "path": lambda r, s: r.choice(s.paths).replace("{id}", str(r.randint(1000, 99999))),
    "ok_status": lambda r, s: r.choice((200,) * 8 + (201, 204)),
    "client_status": lambda r, s: r.choice((400, 401, 403, 404, 404, 404, 409, 422)),
    "ms": lambda r, s: max(1, int(r.lognormvariate(3.0, 0.7))),
    "slow_ms": lambda r, s: r.randint(1200, 6500),
    "gc_ms": lambda r, s: r.randint(180, 900),
    "seconds": lambda r, s: round(r.uniform(0.4, 95), 1),
    "size": lambda r, s: r.randint(0, 8192),
    "dep": lambda r, s: r.choice(s.deps),
    "client": lambda r, s: r.choice(CLIENTS),
    "user": lambda r, s: r.choice(USERS),
    "ip": lambda r, s: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
    "count": lambda r, s: r.randint(2, 800),
    "items": lambda r, s: r.randint(1, 12),
    "lag": lambda r, s: r.randint(5_000, 120_000),
    "partition": lambda r, s: r.randint(0, 11),
    "attempt": lambda r, s: r.randint(1, 3),
    "used": lambda r, s: r.randint(1, 20),
    "idle": lambda r, s: r.randint(0, 30),
    "pool_used": lambda r, s: r.randint(44, 50),
    "cert_days": lambda r, s: r.randint(3, 14),
    "percent": lambda r, s: r.randint(50, 95),
    "disk": lambda r, s: r.randint(95, 99),
    "collection": lambda r, s: r.choice(COLLECTIONS),
    "cache_key": lambda r, s: f"{s.domain}:{r.randint(1, 5000)}",
    "flag": lambda r, s: r.choice(FLAGS),
    "flag_value": lambda r, s: r.choice(("true", "false")),
    "login_method": lambda r, s: r.choice(("password", "password", "sso", "passkey")),
    "job_id": lambda r, s: f"job-{r.getrandbits(32):08x}",
    "msg_id": lambda r, s: f"msg-{r.getrandbits(48):012x}",
    "payment_id": lambda r, s: f"pay_{r.getrandbits(48):012x}",
    "order_id": lambda r, s: f"ORD-{r.randint(100000, 999999)}",
    "cart_id": lambda r, s: f"cart-{r.getrandbits(32):08x}",
    "sku": lambda r, s: f"SKU-{r.randint(10000, 99999)}",
    "stock": lambda r, s: r.randint(0, 9),
    "amount": lambda r, s: f"{r.uniform(4.5, 480):.2f}",
    "service": lambda r, s: s.name,
}


class _Fill(dict):
    """The values of a message: each placeholder drawn on first use."""

    def __init__(self, rng: random.Random, spec: ServiceSpec):
        super().__init__()
        self.rng, self.spec = rng, spec

    def __missing__(self, key: str) -> object:
        value = FILLERS[key](self.rng, self.spec)
        self[key] = value
        return value


def templates_for(spec: ServiceSpec) -> dict[str, list[tuple[str, str]]]:
    """All message templates a service can log, by severity."""
    parts = [COMMON_TEMPLATES, DOMAIN_TEMPLATES.get(spec.domain, {})]
    parts.append(HTTP_TEMPLATES if spec.domain in HTTP_DOMAINS else WORKER_TEMPLATES)
    merged: dict[str, list[tuple[str, str]]] = {severity: [] for severity in SEVERITIES}
    for part in parts:
        for severity, templates in part.items():
            merged[severity].extend(templates)
    return merged


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class LogMaker:
    """Builds LogEntry documents for one service."""

    project_id: ObjectId | None
    service_id: ObjectId | None
    project: ProjectSpec
    spec: ServiceSpec
    rng: random.Random
    templates: dict[str, list[tuple[str, str]]] = field(init=False)
    tests: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.templates = templates_for(self.spec)
        module = self.spec.name.replace("-", "_")
        self.tests = tuple(
            f"tests/test_{module}.py::test_{case}"
            for case in ("happy_path", "invalid_input", "timeout", "concurrency")
        )

    def make(
        self, when: datetime, severity: str, text: str, logger: str, *, in_request: bool = False
    ) -> LogEntry:
        """One entry; ``in_request``: logged while handling work (a request, a job), so it
        may carry request/trace ids, the function that logged it and a test id."""
        rng, spec = self.rng, self.spec
        fill = _Fill(rng, spec)
        message = text.format_map(fill)
        attributes: dict[str, object] = {"host": f"{self.project.slug}-{spec.name}-1"}
        if in_request and (logger.startswith("http") or rng.random() < 0.6):
            attributes["request_id"] = f"{rng.getrandbits(64):016x}"
            attributes["trace_id"] = f"{rng.getrandbits(128):032x}"
        for key in ("method", "path", "user", "client", "job_id", "payment_id", "order_id"):
            if key in fill:
                attributes[key] = fill[key]
        for key in ("ok_status", "client_status"):
            if key in fill:
                attributes["status"] = fill[key]
        if "ms" in fill:
            attributes["duration_ms"] = fill["ms"]
        source = f"{spec.name}.{logger}" if rng.random() < 0.7 else None
        func_id = test_id = None
        if in_request and rng.random() < 0.3:
            func_id = f"{spec.name.replace('-', '_')}.{logger.split('.')[0]}.handle"
        if in_request and rng.random() < 0.05:
            test_id = rng.choice(self.tests)
        return LogEntry(
            project_id=self.project_id,
            service_id=self.service_id,
            severity=severity,
            level=SEVERITY_LEVEL[severity],
            message=message,
            timestamp=truncate_ms(when),
            source=source,
            test_id=test_id,
            func_id=func_id,
            attributes=attributes,
        )

    def random_entry(self, when: datetime, weights: tuple[float, ...]) -> LogEntry:
        severity = self.rng.choices(SEVERITIES, weights=weights)[0]
        choices = self.templates[severity] or self.templates["warn"]
        text, logger = self.rng.choice(choices)
        return self.make(when, severity, text, logger, in_request=True)


def generate_logs(
    maker: LogMaker,
    timeline: Timeline,
    start: datetime,
    end: datetime,
    hot_points: Iterable[CpuPoint] = (),
) -> list[LogEntry]:
    """Logs of one service between ``start`` and ``end``, oldest first.

    The volume follows the daily rhythm; start-up messages mark the last deployment, a
    shutdown the stop, restarts and crashes a crash loop, and warnings the CPU spikes.
    """
    rng, spec = maker.rng, maker.spec
    until = min(end, timeline.logs_until or end)
    weights = SEVERITY_WEIGHTS.get(spec.health, SEVERITY_WEIGHTS["Unknown"])
    slot = POINT_INTERVAL
    entries: list[LogEntry] = []

    t = start
    while t < until:
        slot_end = min(t + slot, until)
        failing = timeline.failing_since is not None and t >= timeline.failing_since
        rate = spec.log_rate * (0.25 + 0.75 * daily_rhythm(t)) * (3 if failing else 1)
        count = poisson(rng, rate * ((slot_end - t) / timedelta(hours=1)))
        for _ in range(count):
            when = t + (slot_end - t) * rng.random()
            entries.append(maker.random_entry(when, FAILING_WEIGHTS if failing else weights))
        t = slot_end

    entries.extend(_lifecycle_logs(maker, timeline, start, until))
    for point in hot_points:
        when = point.time + timedelta(seconds=rng.uniform(1, 60))
        if start <= when < until:
            text = f"High CPU usage: {point.load:.1f}% (threshold {HIGH_LOAD:.0f}%)"
            entries.append(maker.make(when, "warn", text, "monitor"))
    entries.sort(key=lambda entry: entry.timestamp)
    return entries


def _lifecycle_logs(
    maker: LogMaker, timeline: Timeline, start: datetime, until: datetime
) -> Iterator[LogEntry]:
    rng, spec = maker.rng, maker.spec

    def at(base: datetime, seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    deployed = timeline.deployed_at
    if start <= deployed < until:
        yield maker.make(at(deployed, -2), "info", "Received SIGTERM; draining connections", "app")
        startup = (
            f"Starting {spec.name} {spec.version}",
            f"Connected to {spec.deps[0]}",
            f"Listening on 0.0.0.0:{spec.port}",
            "Ready to accept traffic",
        )
        for i, text in enumerate(startup):
            yield maker.make(at(deployed, 0.4 * i + rng.uniform(0, 0.3)), "info", text, "app")
    if timeline.stopped_at and start <= timeline.stopped_at <= until:
        stop = timeline.stopped_at
        yield maker.make(at(stop, -3), "info", "Received SIGTERM; shutting down", "app")
        yield maker.make(at(stop, -1), "info", "Shutdown complete", "app")
    if timeline.failing_since:
        t = max(timeline.failing_since, start)
        attempt = 0
        while t < until:
            attempt += 1
            rss = rng.randint(1900, 2048)
            crash = f"Process killed: out of memory (RSS {rss} MB, limit 2048 MB)"
            yield maker.make(t, "critical", crash, "runtime")
            yield maker.make(
                at(t, rng.uniform(5, 20)), "warn", f"Restarting (attempt {attempt})", "supervisor"
            )
            t = at(t, rng.uniform(12, 25) * 60)


# --- writing -------------------------------------------------------------------------


def insert_in_chunks(model: type, documents: list, chunk_size: int = CHUNK_SIZE) -> int:
    """Validate, then bulk-insert ``documents`` ``chunk_size`` at a time."""
    for document in documents:
        document.validate()
    for i in range(0, len(documents), chunk_size):
        model.objects.insert(documents[i : i + chunk_size], load_bulk=False)
    return len(documents)


def database_has_projects() -> bool:
    return Project.objects.only("id").first() is not None


def ensure_project(spec: ProjectSpec) -> tuple[Project, bool]:
    """The demo project with this name, created when missing (``True``)."""
    found = Project.objects(name_key=name_key(spec.name)).first()
    if found is not None:
        return found, False
    data = {
        "name": spec.name,
        "owner": spec.owner,
        "description": spec.description,
        "tags": list(spec.tags),
        "path": f"/srv/projects/{spec.slug}",
        "tests_dir_path": "tests",
    }
    return projects.load_project(projects.create_project(data)["id"]), True


def ensure_service(
    project: Project, spec: ServiceSpec, timeline: Timeline, now: datetime, slug: str
) -> tuple[Service, bool]:
    found = Service.objects(project_id=project.id, name_key=name_key(spec.name)).first()
    if found is not None:
        return found, False
    running = spec.status in ("Running", "Starting")
    container = f"{slug}-{spec.name}-1"
    data = {
        "project_id": project.id,
        "name": spec.name,
        "description": spec.description,
        "port": spec.port,
        "url": f"http://{container}:{spec.port}",
        "status": spec.status,
        "health": spec.health,
        "version": spec.version,
        "uptime": format_uptime(now - timeline.deployed_at) if running else None,
        "last_deployment": timeline.deployed_at,
        "container_name": container,
        "tags": list(spec.tags),
    }
    return services.load_service(services.create_service(data)["id"]), True


def ensure_metric(svc: Service) -> tuple[CpuMetric, bool]:
    found = CpuMetric.objects(service_id=svc.id).first()
    if found is not None:
        return found, False
    metric = CpuMetric(
        project_id=svc.project_id,
        service_id=svc.id,
        service_name=svc.name,
        service_key=name_key(svc.name),
    )
    metric.save(force_insert=True)
    return metric, True


@dataclass
class ServiceWork:
    """One service still to fill (what the progress bar counts)."""

    project: ProjectSpec
    spec: ServiceSpec
    service: Service
    timeline: Timeline

    @property
    def name(self) -> str:
        return f"{self.project.slug}/{self.spec.name}"


ProgressFactory = Callable[[list[ServiceWork]], AbstractContextManager[Iterable[ServiceWork]]]


def seed_demo(
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    *,
    now: datetime | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, int]:
    """Create whatever of the demo data is missing; return the counts created.

    ``progress`` wraps the list of services to fill (e.g. ``click.progressbar``).
    Database errors (``pymongo.errors.ConnectionFailure``) propagate to the caller.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    now = truncate_ms(now or utcnow())
    start = now - timedelta(days=days)
    summary = dict.fromkeys(("projects", "services", "metrics", "points", "logs"), 0)
    summary.update(reused_projects=0, reused_services=0)

    work = []
    for project_spec in CATALOG:
        project, created = ensure_project(project_spec)
        summary["projects" if created else "reused_projects"] += 1
        for spec in project_spec.services:
            rng = service_rng(seed, project_spec, spec, "timeline")
            timeline = plan_timeline(rng, spec.status, now)
            svc, created = ensure_service(project, spec, timeline, now, project_spec.slug)
            summary["services" if created else "reused_services"] += 1
            if svc.last_deployment and svc.last_deployment != timeline.deployed_at:
                # a service that existed before: its logs show its own deployment
                timeline = Timeline(
                    deployed_at=svc.last_deployment,
                    stopped_at=timeline.stopped_at,
                    silent_since=timeline.silent_since,
                    failing_since=timeline.failing_since,
                )
            work.append(ServiceWork(project_spec, spec, svc, timeline))

    times = point_times(now, days)
    wrap = progress or nullcontext
    with wrap(work) as items:
        for item in items:
            created = _fill_service(item, seed, times, start, now)
            for key, count in created.items():
                summary[key] += count
    return summary


def _fill_service(
    item: ServiceWork, seed: int, times: list[datetime], start: datetime, now: datetime
) -> dict[str, int]:
    svc = item.service
    metric, metric_created = ensure_metric(svc)
    points_rng = service_rng(seed, item.project, item.spec, "points")
    points = generate_points(metric.id, item.spec, item.timeline, points_rng, times)
    created = {"metrics": int(metric_created), "points": 0, "logs": 0}
    if CpuPoint.objects(metric_id=metric.id).only("id").first() is None:
        created["points"] = insert_in_chunks(CpuPoint, points)
    if LogEntry.objects(service_id=svc.id).only("id").first() is None:
        maker = LogMaker(
            svc.project_id,
            svc.id,
            item.project,
            item.spec,
            service_rng(seed, item.project, item.spec, "logs"),
        )
        failing = item.timeline.failing_since
        hot = [p for p in points if p.load >= HIGH_LOAD and not (failing and p.time >= failing)]
        logs = generate_logs(maker, item.timeline, start, now, hot)
        created["logs"] = insert_in_chunks(LogEntry, logs)
    return created


def describe(summary: dict[str, int]) -> str:
    """The one-line summary the command prints."""
    created = (
        f"{summary['projects']} projects, {summary['services']} services, "
        f"{summary['metrics']} CPU metric entries, {summary['points']:,} CPU points and "
        f"{summary['logs']:,} logs"
    )
    if not any(summary[key] for key in ("projects", "services", "metrics", "points", "logs")):
        return "Demo data already present: nothing created."
    reused = summary["reused_projects"] + summary["reused_services"]
    suffix = (
        f" (reused {summary['reused_projects']} projects, {summary['reused_services']} services)"
        if reused
        else ""
    )
    return f"Created {created}{suffix}."

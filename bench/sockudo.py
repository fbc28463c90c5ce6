"""sockudo as a benchmark peer: the one app the load generator knows, and its environment.
Shared by bench/run.py (sockudo with its local drivers) and bench/cluster.py (with its Redis
adapter)."""

SOCKUDO_APP, SOCKUDO_KEY, SOCKUDO_SECRET = "bench", "bench-key", "bench-secret"


def sockudo_env(listen_port):
    """sockudo's environment: its local drivers, one app (id/key/secret known to the load
    generator), no rate limiter, no metrics listener, and every per-app limit (connections,
    events per second, payload size) raised above the runs'. bench/cluster.py starts its Redis
    adapter instances with this and the adapter's settings on top."""
    return {
        "HOST": "127.0.0.1", "PORT": str(listen_port),
        "ADAPTER_DRIVER": "local", "CACHE_DRIVER": "memory", "QUEUE_DRIVER": "memory",
        "APP_MANAGER_DRIVER": "memory", "RATE_LIMITER_ENABLED": "false",
        "METRICS_ENABLED": "false", "DEBUG_MODE": "false", "SOCKUDO_MAX_CONNECTIONS": "100000",
        "WEBSOCKET_MAX_PAYLOAD_KB": "1024",
        "SOCKUDO_DEFAULT_APP_ID": SOCKUDO_APP, "SOCKUDO_DEFAULT_APP_KEY": SOCKUDO_KEY,
        "SOCKUDO_DEFAULT_APP_SECRET": SOCKUDO_SECRET, "SOCKUDO_DEFAULT_APP_ENABLED": "true",
        "SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": "100000",
        "SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND": "1000000",
        "SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND": "1000000",
        "SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND": "1000000",
        "SOCKUDO_DEFAULT_APP_MAX_EVENT_PAYLOAD_IN_KB": "1024",
        "RUST_LOG": "warn",
    }



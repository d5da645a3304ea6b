"""Where runs are kept: the store's URI and checks (`uri`), SQLite files of both stores
(`sqlite`, shared with search), the client (`client`), `tunetrack server` (`server`) and
links into the MLflow UI that open a study's runs in Model training mode (`ui`), and the one
rule that keeps passwords out of every line showing a URI (`redaction`)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "uri": ("DEFAULT_DB_FILE", "check_mlflow_store", "check_reachable", "ensure_local_store",
            "resolve_tracking_uri"),
    "redaction": ("PASSWORD_HINT", "password_hint", "redact"),
    "sqlite": ("SQLITE_MAGIC", "checkpoint_wal", "file_lock", "other_kind", "shown_path",
               "sqlite_path", "sqlite_tables", "sqlite_uri", "store_kind", "use_wal"),
    "client": ("client_for", "end_run", "error_code", "get_or_create_experiment", "open_client",
               "quiet_downloads"),
    "server": ("is_loopback", "mlflow_server_argv", "serve"),
    "ui": ("UI_QUERY", "UiHint", "experiment_id", "trials_filter", "ui_hint", "ui_url"),
})

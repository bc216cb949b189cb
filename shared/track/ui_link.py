"""Where a person sees an experiment's runs: the MLflow UI link that opens its runs table.

MLflow 3 opens an experiment in its GenAI view (traces, empty for a training); `workflowType=machine_learning`
opens the runs table. A local store (a folder, a SQLite file) has no server: the line names the `mlflow ui` command
that serves it, and the link on the address that command listens on by default. Light: imports no MLflow.
"""

import shlex

from shared.track.redaction import redact_uri

LOCAL_UI = "http://127.0.0.1:5000"


def runs_table_url(server: str, experiment_id: str) -> str:
    """The UI address of an experiment's runs table on `server` (http://host:port)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def where_to_look(tracking_uri: str, experiment_id: str) -> str:
    """The link for a tracking server; for a local store, the `mlflow ui` command and the link it will serve."""
    uri = redact_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        return runs_table_url(uri, experiment_id)
    return f"`mlflow ui --backend-store-uri {shlex.quote(uri)}`, then {runs_table_url(LOCAL_UI, experiment_id)}"

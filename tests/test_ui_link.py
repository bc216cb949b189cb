"""The MLflow UI link a closing line gives: the runs table of the experiment, on a server or on `mlflow ui`."""

import shlex

import pytest

from shared.track.ui_link import where_to_look


def test_a_tracking_server_gets_the_link_to_its_runs_table_without_credentials():
    link = where_to_look("https://admin:secret@mlflow.example.org:8443/", "17")
    assert link == "https://mlflow.example.org:8443/#/experiments/17?workflowType=machine_learning"


@pytest.mark.parametrize("store", ["sqlite:///mlflow.db", "file:///tmp/my runs", "mlruns"])
def test_a_local_store_gets_the_command_that_serves_it_and_the_link_there(store):
    link = where_to_look(store, "3")
    command, url = link.split(", then ")
    assert shlex.split(command.strip("`")) == ["mlflow", "ui", "--backend-store-uri", store], "quoted for a shell"
    assert url == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"

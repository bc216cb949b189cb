"""The container stage: Docker Compose v2 and the images `bash .ci/containers` builds, on the engine it starts.

These tests are deselected by default (marker `containers`) and run only in that stage, which builds the images
first and sets DOCKER_HOST. Without an engine they skip, or fail when REQUIRE_CONTAINERS=1.
"""

import os

import pytest

from containers.stack import engine_missing


@pytest.fixture(scope="session", autouse=True)
def container_engine() -> None:
    reason = engine_missing()
    if reason is None:
        return
    message = f"{reason}: run `bash .ci/containers`, which builds the images and runs these tests"
    if os.environ.get("REQUIRE_CONTAINERS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)

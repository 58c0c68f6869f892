"""A database that goes away answers clean 503 problems with Retry-After, never a 500."""

from __future__ import annotations

from tests.conftest import assert_problem, fresh_postgres, start_server, stop_server
from tests.helpers import registered, unique


def test_a_vanished_database_answers_503_and_liveness_stays_up(postgres_template, tmp_path):
    database_url, drop = fresh_postgres(postgres_template)
    server = start_server(database_url, tmp_path / "server.log")
    try:
        key = server.add_party("maker-co", "CN")
        assert server.request("POST", "/v1/events", key, json=registered(unique())).status_code == 201
        drop()
        for method, path, body in (("GET", "/v1/events", None), ("POST", "/v1/events", registered(unique())),
                                   ("GET", "/v1/parties", None)):
            response = server.request(method, path, key, json=body)
            assert_problem(response, 503)
            assert response.headers["Retry-After"] == "1"
        assert server.request("GET", "/healthz").status_code == 200
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        stop_server(server)

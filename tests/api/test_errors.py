"""`invalid_request` (the framework's 422 for query, path and header parameters) names each field and its problem in
its message, and keeps every problem in ``details``."""

from __future__ import annotations

from api.errors import MAX_PROBLEMS_IN_MESSAGE, validation_message


def _invalid_request(response) -> dict:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    return error


def test_the_message_names_the_query_parameter_and_its_problem(http):
    error = _invalid_request(http.get("/v1/jobs", params={"limit": 1000}))
    assert error["message"] == "query parameter 'limit': Input should be less than or equal to 100"
    assert error["details"] == [{"loc": ["query", "limit"], "msg": "Input should be less than or equal to 100", "type": "less_than_equal"}]


def test_every_invalid_parameter_is_named(http):
    error = _invalid_request(http.get("/v1/jobs", params={"limit": "many", "status": "sleeping"}))
    assert {tuple(d["loc"]) for d in error["details"]} == {("query", "limit"), ("query", "status")}
    assert "query parameter 'limit': Input should be a valid integer" in error["message"]
    assert "query parameter 'status': Input should be " in error["message"] and "; " in error["message"]


def test_an_events_cursor_that_is_not_a_number(http):
    error = _invalid_request(http.get("/v1/jobs/job_x/events", params={"after": "soon"}))
    assert error["message"].startswith("query parameter 'after': ") and error["details"][0]["loc"] == ["query", "after"]


def test_locations_read_as_words_and_long_lists_are_counted():
    problem = {"msg": "Field required", "type": "missing"}
    assert validation_message([{**problem, "loc": ["path", "job_id"]}]) == "path parameter 'job_id': Field required"
    assert validation_message([{**problem, "loc": ["header", "idempotency-key"]}]) == "header 'idempotency-key': Field required"
    assert validation_message([{**problem, "loc": ["body", "classes", 0, "name"]}]) == "body field 'classes[0].name': Field required"
    assert validation_message([{**problem, "loc": ["body"]}]) == "the request body: Field required"
    many = [{**problem, "loc": ["query", f"q{i}"]} for i in range(MAX_PROBLEMS_IN_MESSAGE + 2)]
    message = validation_message(many)
    assert message.count("Field required") == MAX_PROBLEMS_IN_MESSAGE and message.endswith("(and 2 more problems in details)")
    assert validation_message([]) == "the request's parameters are invalid"

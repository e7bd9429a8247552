"""One error tree: every code the server can send is one the SDK raises its own class for, with the same
HTTP status, and the framework's own errors (an unknown route, a wrong method) answer with codes of it."""

import client._exceptions as sdk
from service import errors


def server_tree() -> dict[str, int]:
    family = [errors.L2OError]
    for cls in family:
        family.extend(cls.__subclasses__())
    return {cls.code: cls.status for cls in family}


def test_the_sdk_and_the_server_know_the_same_codes_with_the_same_statuses():
    assert {code: cls.http_status for code, cls in sdk.BY_CODE.items()} == server_tree()


def test_each_code_becomes_its_own_sdk_class():
    for code, status in server_tree().items():
        assert sdk.error_class(status, code).code == code


def test_framework_errors_answer_with_codes_of_the_tree(client, admin_headers):
    codes = set(server_tree())
    missing = client.get("/v1/nothing-here", headers=admin_headers)
    wrong_method = client.put("/v1/sessions", headers=admin_headers)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
    assert {errors.by_status(s).code for s in (400, 401, 403, 404, 405, 409, 413, 415, 418, 422, 429, 502)} <= codes

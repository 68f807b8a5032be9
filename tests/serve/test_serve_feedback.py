"""Feedback over the conversations API: thumbs, edits, versions of regenerated replies and picks land
in the real SQLite store, on the shared real server (conftest.py)."""

from __future__ import annotations

import httpx
import pytest

from parley.store import Store

GREEDY = {"temperature": 0, "max_new_tokens": 6}


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server[0], timeout=60) as http:
        yield http


def _answered(api) -> tuple[str, int]:
    cid = api.post("/v1/conversations", json={"system": "Be brief."}).json()["id"]
    api.post(f"/v1/conversations/{cid}/messages", json={"content": "Name a colour", "params": GREEDY, "stream": False})
    reply = api.get(f"/v1/conversations/{cid}").json()["messages"][-1]
    assert reply["role"] == "assistant"
    return cid, reply["id"]


def test_thumbs_and_notes_land_in_the_store(api, tmp_db):
    cid, mid = _answered(api)
    answer = api.post(f"/v1/conversations/{cid}/messages/{mid}/feedback", json={"rating": "bad", "note": "too vague"})
    assert answer.status_code == 200 and answer.json() == {"id": mid, "rating": "bad", "note": "too vague"}
    (stored,) = Store(tmp_db).feedback(conversation_id=cid)
    assert (stored.kind, stored.note, stored.chosen, stored.message_id) == ("bad", "too vague", None, mid)
    assert stored.context == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}]
    listed = api.get(f"/v1/conversations/{cid}/feedback").json()["data"]
    assert [f["kind"] for f in listed] == ["bad"]
    api.post(f"/v1/conversations/{cid}/messages/{mid}/feedback", json={"rating": None})
    assert api.get(f"/v1/conversations/{cid}/feedback").json()["data"] == []


def test_regenerated_versions_are_kept_listed_and_picked(api, tmp_db):
    cid, first = _answered(api)
    original = api.get(f"/v1/conversations/{cid}").json()["messages"][-1]["content"]
    api.post(f"/v1/conversations/{cid}/regenerate", json={"params": {"max_new_tokens": 6, "seed": 7}, "stream": False})
    reply = api.get(f"/v1/conversations/{cid}").json()["messages"][-1]
    assert (reply["version"], reply["versions"]) == (2, 2)
    versions = api.get(f"/v1/conversations/{cid}/messages/{reply['id']}/versions").json()
    assert versions["data"][0] == original and versions["version"] == 2

    picked = api.post(f"/v1/conversations/{cid}/messages/{reply['id']}/versions/1")
    assert picked.status_code == 200 and picked.json()["version"] == 1
    again = api.get(f"/v1/conversations/{cid}").json()["messages"][-1]  # what a reload shows
    assert (again["content"], again["version"]) == (original, 1)
    if versions["data"][1] != original:
        (pair,) = Store(tmp_db).feedback(conversation_id=cid)
        assert (pair.kind, pair.chosen, pair.rejected) == ("pick", original, versions["data"][1])


def test_an_edit_is_shown_and_preferred(api, tmp_db):
    cid, mid = _answered(api)
    before = api.get(f"/v1/conversations/{cid}").json()["messages"][-1]["content"]
    edited = api.patch(f"/v1/conversations/{cid}/messages/{mid}", json={"content": "Blue."})
    assert edited.status_code == 200 and edited.json()["content"] == "Blue."
    assert api.get(f"/v1/conversations/{cid}").json()["messages"][-1]["content"] == "Blue."
    (pair,) = Store(tmp_db).feedback(conversation_id=cid)
    assert (pair.kind, pair.chosen, pair.rejected) == ("edit", "Blue.", before)


def test_bad_feedback_requests_name_the_field(api):
    cid, mid = _answered(api)
    wrong = api.post(f"/v1/conversations/{cid}/messages/{mid}/feedback", json={"rating": "meh"})
    assert wrong.status_code == 400 and "rating" in wrong.json()["error"]["message"]
    user_message = mid - 1
    not_reply = api.post(f"/v1/conversations/{cid}/messages/{user_message}/feedback", json={"rating": "good"})
    assert not_reply.status_code == 404 and not_reply.json()["error"]["code"] == "message_not_found"
    missing = api.post(f"/v1/conversations/{cid}/messages/{mid}/versions/5")
    assert missing.status_code == 404 and "choose 1 to 1" in missing.json()["error"]["message"]
    empty = api.patch(f"/v1/conversations/{cid}/messages/{mid}", json={"content": ""})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "content"
    gone = api.post(f"/v1/conversations/nope/messages/{mid}/feedback", json={"rating": "good"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "conversation_not_found"


def test_feedback_routes_are_documented(api):
    paths = api.get("/openapi.json").json()["paths"]
    route = paths["/v1/conversations/{cid}/messages/{mid}/feedback"]["post"]
    assert "Rating" in str(route["requestBody"]) and "404" in route["responses"]
    assert "patch" in paths["/v1/conversations/{cid}/messages/{mid}"]

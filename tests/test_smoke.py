"""The shortest end-to-end path: two clients meet in a room."""

from .harness import admin_json


def test_two_clients_chat_in_a_room(broker, clients):
    alice, bob = clients(), clients()
    alice.send("login alice", "create lounge")
    alice.event("reply", cmd="create", room="lounge")
    bob.send("join lounge bob")
    bob.event("reply", cmd="join", room="lounge", name="bob")
    alice.event("join", room="lounge", name="bob")
    bob.send("hello alice")
    assert alice.event("msg", room="lounge")["text"] == "hello alice"
    assert admin_json(broker.control, "ls")["rooms"][0]["members"] == ["alice", "bob"]
    broker.log.wait_for("New room lounge created")

"""python-arango 8.x against a real tickshipd: every call of reference/arango-clients.md
sections 2-4 plus the logger and WAL calls, with their error cases.

usage: arango_suite.py URL PASSWORD
Prints one line per check group and "ALL CHECKS PASSED (n)" at the end; exits 1 on the first
failure, with the traceback.
"""
import sys
import time

from arango import ArangoClient
from arango.exceptions import (
    CollectionCreateError,
    CollectionDeleteError,
    DocumentDeleteError,
    DocumentGetError,
    DocumentInsertError,
    DocumentReplaceError,
    DocumentRevisionError,
    DocumentUpdateError,
    JWTAuthError,
    ReplicationDumpError,
    ReplicationInventoryError,
    ServerConnectionError,
)

URL, PASSWORD = sys.argv[1], sys.argv[2]
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        raise AssertionError(what)


def expect(error_type, error_code, call, what):
    """`call` raises `error_type` with `error_code` (errorNum)."""
    try:
        call()
    except error_type as error:
        check(error.error_code == error_code, f"{what}: errorNum {error.error_code}, wanted {error_code}")
        return error
    raise AssertionError(f"{what}: no {error_type.__name__}")


client = ArangoClient(hosts=URL)

# -- connection, auth, version (section 2) -------------------------------------------------------
db = client.db("_system", "root", PASSWORD, verify=True)
check(db.version().startswith("3."), "version is 3.x")
details = db.version(details=True)
check(details["details"]["engine"] == "rocksdb", "version details")
props = db.properties()
check(props["name"] == "_system" and props["system"] is True, f"database properties {props}")
expect(ServerConnectionError, 11, lambda: client.db("_system", "root", "wrong", verify=True), "wrong password")
expect(ServerConnectionError, 1228, lambda: client.db("nope", "root", PASSWORD, verify=True), "unknown database")
jwt_db = client.db("_system", "root", PASSWORD, auth_method="jwt")
check(jwt_db.version().startswith("3."), "JWT login works")
expect(JWTAuthError, 11, lambda: client.db("_system", "root", "wrong", auth_method="jwt"), "JWT wrong password")
print("connection, auth, version: ok", flush=True)

# -- collections (section 3) ---------------------------------------------------------------------
for name in ("users", "edges"):
    if db.has_collection(name):
        db.delete_collection(name)
users = db.create_collection("users")
edges = db.create_collection("edges", edge=True)
check(db.has_collection("users"), "has_collection")
listed = {c["name"]: c for c in db.collections()}
check(listed["users"]["type"] == "document" and listed["edges"]["type"] == "edge", f"collections {listed}")
check(listed["users"]["system"] is False, "not a system collection")
expect(CollectionCreateError, 1207, lambda: db.create_collection("users"), "duplicate collection")
expect(CollectionCreateError, 1208, lambda: db.create_collection("1bad name"), "illegal collection name")
check(users.count() == 0 and len(users) == 0, "empty count")
check(db.delete_collection("nothere", ignore_missing=True) is False, "delete missing, ignored")
expect(CollectionDeleteError, 1203, lambda: db.delete_collection("nothere"), "delete missing")
print("collections: ok", flush=True)

# -- documents (section 4) -----------------------------------------------------------------------
meta = users.insert({"_key": "alice", "age": 30})
check(meta["_id"] == "users/alice" and meta["_key"] == "alice" and meta["_rev"], f"insert {meta}")
rev_alice = meta["_rev"]
generated = users.insert({"age": 5}, return_new=True)
check(generated["_key"].isdigit(), f"generated key {generated['_key']}")
check(generated["new"]["age"] == 5 and generated["new"]["_rev"] == generated["_rev"], "returnNew")
expect(DocumentInsertError, 1210, lambda: users.insert({"_key": "alice"}), "unique constraint")
expect(DocumentInsertError, 1221, lambda: users.insert({"_key": "bad key/x"}), "illegal key")
expect(DocumentInsertError, 1221, lambda: users.insert({"_key": "k" * 255}), "key too long")
upsert = users.insert({"_key": "alice", "v": 2}, overwrite_mode="update", return_old=True)
check(upsert["_old_rev"] == rev_alice and upsert["old"]["age"] == 30, f"overwriteMode=update {upsert}")
doc = users.get("alice")
check(doc["age"] == 30 and doc["v"] == 2 and doc["_rev"] == upsert["_rev"], f"get after update {doc}")
ignored = users.insert({"_key": "alice", "v": 99}, overwrite_mode="ignore")
check(ignored["_rev"] == upsert["_rev"] and users.get("alice")["v"] == 2, "overwriteMode=ignore")

results = users.insert_many([{"_key": "bob"}, {"_key": "alice"}, {"x": 1}])
check(isinstance(results[0], dict) and results[0]["_key"] == "bob", f"insert_many ok item {results[0]}")
check(isinstance(results[1], DocumentInsertError) and results[1].error_code == 1210, "insert_many error item")
check(isinstance(results[2], dict) and results[2]["_key"].isdigit(), "insert_many generated key")

check(users.get("nobody") is None, "get missing is None")
expect(DocumentGetError, 1203, lambda: db.collection("nothere").get("x"), "get from missing collection")
check(users.has("alice") and not users.has("nobody"), "has")
current = users.get("alice")
expect(DocumentRevisionError, 1200, lambda: users.get({"_key": "alice", "_rev": "1"}), "get with stale rev")
check(users.get({"_key": "alice", "_rev": current["_rev"]})["_key"] == "alice", "get with current rev")

updated = users.update({"_key": "alice", "age": 31})
check(updated["_old_rev"] == current["_rev"] and updated["_rev"] != current["_rev"], f"update {updated}")
check(users.get("alice")["age"] == 31 and users.get("alice")["v"] == 2, "update merged")
expect(DocumentRevisionError, 1200, lambda: users.update({"_key": "alice", "_rev": "1", "age": 1}, check_rev=True), "update stale rev")
expect(DocumentUpdateError, 1202, lambda: users.update({"_key": "nobody", "a": 1}), "update missing")
nulls = users.update({"_key": "alice", "v": None}, keep_none=False)
check("v" not in users.get("alice"), f"keepNull=false removes {nulls}")

replaced = users.replace({"_key": "alice", "name": "Alice"}, return_new=True)
check(replaced["new"]["name"] == "Alice" and "age" not in replaced["new"], f"replace {replaced}")
expect(DocumentReplaceError, 1202, lambda: users.replace({"_key": "nobody", "a": 1}), "replace missing")
expect(DocumentRevisionError, 1200, lambda: users.replace({"_key": "alice", "_rev": "1", "a": 1}, check_rev=True), "replace stale rev")

many = users.get_many(["alice", "nobody", "bob"])
check([d["_key"] for d in many] == ["alice", "bob"], f"get_many {many}")

deleted = users.delete("bob")
check(deleted["_key"] == "bob", f"delete {deleted}")
check(users.delete("bob", ignore_missing=True) is False, "delete missing ignored")
expect(DocumentDeleteError, 1202, lambda: users.delete("bob"), "delete missing")
expect(DocumentRevisionError, 1200, lambda: users.delete({"_key": "alice", "_rev": "1"}), "delete stale rev")
check(users.count() == 3, f"count {users.count()}")

edge = edges.insert({"_from": "users/alice", "_to": "users/bob", "w": 1})
check(edge["_id"].startswith("edges/"), "edge insert")
expect(DocumentInsertError, 1233, lambda: edges.insert({"w": 1}), "edge without _from/_to")

users.truncate()
check(users.count() == 0 and users.get("alice") is None, "truncate")
print("documents: ok", flush=True)

# -- replication logger and WAL (sections 5, 6) ---------------------------------------------------
repl = db.replication
state = repl.logger_state()
check(state["state"]["running"] is True, "logger running")
last = int(state["state"]["last_log_tick"])
check(last > 0 and state["server"]["server_id"], f"logger state {state}")
first = repl.logger_first_tick()
check(int(first) >= 1, f"first tick {first}")
check(repl.server_id() == state["server"]["server_id"], "server id")
wal = db.wal
ranges = wal.tick_ranges()
check(int(ranges["tick_min"]) <= int(ranges["tick_max"]) == last, f"wal range {ranges}")
check(wal.last_tick()["tick"] == str(last), "wal last tick")
tail = wal.tail(lower="0", deserialize=True)
check(tail["from_present"] is True, f"from present {tail}")
types = [marker["type"] for marker in tail["content"]]
check(2000 in types and 2300 in types and 2302 in types and 2004 in types, f"marker types {set(types)}")
first_doc = next(m for m in tail["content"] if m["type"] == 2300)
check(first_doc["data"]["_rev"] == first_doc["tick"] and first_doc["cuid"].startswith("c"), f"2300 marker {first_doc}")
check(int(tail["last_included"]) > 0, "last included")
later = wal.tail(lower=str(last), deserialize=True)
check(later["content"] == [] and later["last_included"] == "0", f"nothing after the last tick {later}")
users.insert({"_key": "carol"})
again = wal.tail(lower=str(last), deserialize=True)
check([m["data"]["_key"] for m in again["content"] if m["type"] == 2300] == ["carol"], f"tail after last {again}")
print("replication logger and WAL: ok", flush=True)

# -- dump batches, inventory and dump (reference/arangodb.md section 1.5, 11) ----------------------
users.insert_many([{"_key": f"d{i:03}", "n": i} for i in range(300)])
batch = repl.create_dump_batch(ttl=60)
check(batch["id"] and int(batch["last_tick"]) >= last, f"create_dump_batch {batch}")
check(repl.extend_dump_batch(batch["id"], 120) is True, "extend_dump_batch")
users.insert({"_key": "after-the-batch"})
inventory = repl.inventory(batch["id"], include_system=False)
check(inventory["state"]["last_log_tick"] == batch["last_tick"] and inventory["tick"] == batch["last_tick"],
      f"inventory ticks {inventory['state']} {inventory['tick']}")
names = sorted(c["parameters"]["name"] for c in inventory["collections"])
check(names == ["edges", "users"] and all(c["indexes"] == [] for c in inventory["collections"]), f"inventory {names}")
everything = repl.inventory(batch["id"], include_system=True, all_databases=True)
check("_system" in everything["databases"], f"global inventory {list(everything['databases'])}")
seen = []
for _ in range(100):
    page = repl.dump("users", batch_id=batch["id"], chunk_size=2000, deserialize=True)
    lines = page["content"][0]
    seen += [line["data"]["_key"] for line in lines]
    check(all(line["type"] == 2300 and line["data"]["_rev"] for line in lines), "enveloped lines with _rev")
    if not page.get("check_more"):
        break
check(seen == sorted(seen) and len(seen) == 301 and "after-the-batch" not in seen,
      f"dump pages: {len(seen)} keys, in order, none written after the batch")
check(repl.delete_dump_batch(batch["id"]) is True, "delete_dump_batch")
try:
    repl.dump("users", batch_id=batch["id"])
    check(False, "dump of an ended batch succeeded")
except ReplicationDumpError as error:
    # The driver reads a dump's answer raw, so only the status reaches the error.
    check(error.http_code == 404, f"dump of an ended batch: HTTP {error.http_code}")
expect(ReplicationInventoryError, 1600, lambda: repl.inventory(batch["id"]), "inventory of an ended batch")
print("dump batches: ok", flush=True)

print(f"ALL CHECKS PASSED ({checks})", flush=True)

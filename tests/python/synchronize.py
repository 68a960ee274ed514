"""python-arango 8.x sets up a follower as its documentation shows: `synchronize` from the
leader, then `set_applier_config` and `start_applier` from the sync's last log tick; the
follower then holds the leader's documents and follows new writes.

usage: synchronize.py LEADER_URL FOLLOWER_URL LEADER_ENDPOINT PASSWORD
Prints "ALL CHECKS PASSED" at the end; exits 1 on the first failure, with the traceback.
"""
import sys
import time

from arango import ArangoClient
from arango.exceptions import ReplicationSyncError

LEADER_URL, FOLLOWER_URL, LEADER_ENDPOINT, PASSWORD = sys.argv[1:5]

leader = ArangoClient(hosts=LEADER_URL).db("_system", "root", PASSWORD, verify=True)
follower = ArangoClient(hosts=FOLLOWER_URL).db("_system", "root", PASSWORD, verify=True)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def state(db, name):
    collection = db.collection(name)
    return collection.count(), db.collection(name).checksum(with_rev=True, with_data=True)


def wait_for(what, condition, limit=60.0):
    """Polls another process's state (nothing pushes it) until `condition` holds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


users = leader.create_collection("users")
users.insert_many([{"_key": f"u{i}", "n": i} for i in range(2000)])
users.delete_many([{"_key": f"u{i}"} for i in range(100)])
users.update_many([{"_key": f"u{i}", "n": -i} for i in range(100, 200)])

try:
    follower.replication.synchronize(endpoint=LEADER_ENDPOINT, username="root", password="wrong")
    raise AssertionError("a sync with a wrong password succeeded")
except ReplicationSyncError as error:
    check(error.error_code == 11, f"wrong password: errorNum {error.error_code}")

result = follower.replication.synchronize(
    endpoint=LEADER_ENDPOINT,
    database="_system",
    username="root",
    password=PASSWORD,
    include_system=True,
    incremental=False,
)
tick = result.get("last_log_tick", result.get("lastLogTick"))
check(tick is not None and int(tick) > 0, f"sync answered a last log tick: {result}")
names = [c["name"] for c in result["collections"]]
check("users" in names, f"sync lists the collections it synced: {result}")
check(state(follower, "users") == state(leader, "users"), "the sync made users equal")

follower.replication.set_applier_config(
    endpoint=LEADER_ENDPOINT, username="root", password=PASSWORD, auto_start=True
)
follower.replication.start_applier(last_tick=tick)
users.insert_many([{"_key": f"new{i}"} for i in range(300)])
users.delete({"_key": "u500"})
wait_for("the follower applies what the leader wrote after the sync",
         lambda: state(follower, "users") == state(leader, "users"))
applier = follower.replication.applier_state()
check(applier["state"]["running"] is True, f"applier running: {applier}")
print("ALL CHECKS PASSED", flush=True)

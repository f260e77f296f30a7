"""The people every test configuration knows: on the local tracker, each account is the name.

CLI tests run as one OS login and play several people with --as / DEPLOYBOT_USER, as a shared
operations box would: their configurations say so with `terminal: {trust_as: true}`.
"""

NAMES = ("alice", "bob", "carol", "dana", "erin", "mallory", "quinn", "ops-erin", "bench")
PEOPLE = {name: {"tracker": name} for name in NAMES}
SHARED_BOX = {"people": PEOPLE, "terminal": {"trust_as": True}}

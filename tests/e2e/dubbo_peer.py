"""Dubbo calls with dubbo-ssl-python's DubboClient (a client we did not write), for the
end-to-end tests: `python dubbo_peer.py ADDR CALLS` makes the calls of the JSON array CALLS
([{interface, version, group, method, args}]) at ADDR and prints a JSON array of
{ok, result} or {ok, error}."""

import json
import sys

from dubbo_ssl.client import DubboClient


def main():
    address, calls = sys.argv[1], json.loads(sys.argv[2])
    results = []
    for call in calls:
        client = DubboClient(call["interface"], call.get("group"), version=call["version"], dubbo_version="2.0.2", host=address)
        try:
            results.append({"ok": True, "result": client.call(call["method"], call.get("args", []), timeout=call.get("timeout", 3))})
        except Exception as err:  # noqa: BLE001 - every failure is reported to the test
            results.append({"ok": False, "error": f"{type(err).__name__}: {err}"})
    print(json.dumps(results))


if __name__ == "__main__":
    main()

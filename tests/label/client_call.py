"""One call through ``monailabel.client.MONAILabelClient`` (the client 3D Slicer's module uses), run by the label
environment's python from the server tests: ``python client_call.py <server> <op> '<json kwargs>'``.

Prints one JSON line: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<client exception text>"}``.
"""

from __future__ import annotations

import json
import shutil
import sys

from monailabel.client import MONAILabelClient


def main() -> None:
    server, op, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}")
    client = MONAILabelClient(server)
    try:
        if op == "info":
            result = client.info()
        elif op == "infer":
            dest = kwargs.pop("dest")
            path, params = client.infer(**kwargs)
            if path:
                shutil.move(path, dest)
            result = {"file": dest if path else None, "params": params}
        elif op == "upload_image":
            result = client.upload_image(**kwargs)
        elif op == "save_label":
            result = client.save_label(**kwargs)
        elif op == "datastore":
            result = client.datastore()
        elif op == "train_start":
            result = client.train_start(**kwargs)
        elif op == "train_status":
            result = client.train_status(**kwargs)
        elif op == "next_sample":
            result = client.next_sample(**kwargs)
        else:
            raise SystemExit(f"unknown op {op}")
    except Exception as exc:  # the client raises MONAILabelClientException with "Status: ...; Response: ..."
        print(json.dumps({"ok": False, "error": str(exc)}))
        return
    print(json.dumps({"ok": True, "result": result}))


if __name__ == "__main__":
    main()

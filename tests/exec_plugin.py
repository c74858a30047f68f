"""A kubeconfig `exec` credential plugin for the tests, as `aws eks get-token` is one.

Each call prints an ExecCredential with a real ServiceAccount token from the
TokenRequest API. The token is bound to a Secret of its own, so deleting that
Secret revokes it on the server, as an expiry does; PLUGIN_STATED_SECONDS
makes the stated `expirationTimestamp` that far away instead of the token's
own. Each call appends its Secret's name to PLUGIN_LOG and leaves the token
beside it. While a file `hang` is beside PLUGIN_LOG, a call hangs instead (a
plugin waiting for input or a network that never answers), its pid appended
to `hung.pids` there. The standard library
only: it runs as its own process, once per token.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import sys
import time
import urllib.request
from typing import Any


def call(path: str, body: dict[str, Any]) -> Any:
    env = os.environ
    ctx = ssl.create_default_context(cafile=env["PLUGIN_CA"])
    ctx.load_cert_chain(env["PLUGIN_CERT"], env["PLUGIN_KEY"])
    req = urllib.request.Request(
        env["PLUGIN_SERVER"] + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        return json.load(resp)


def main() -> int:
    env = os.environ
    here = os.path.dirname(env["PLUGIN_LOG"])
    if os.path.exists(os.path.join(here, "hang")):
        with open(os.path.join(here, "hung.pids"), "a") as pids:
            print(os.getpid(), file=pids)
        time.sleep(3600)
        return 1
    info = json.loads(env["KUBERNETES_EXEC_INFO"])
    ns, account = env["PLUGIN_NAMESPACE"], env["PLUGIN_ACCOUNT"]
    secret = call(
        f"/api/v1/namespaces/{ns}/secrets",
        {"metadata": {"generateName": f"{account}-token-"}, "type": "Opaque"},
    )["metadata"]
    bound = {"kind": "Secret", "apiVersion": "v1", "name": secret["name"], "uid": secret["uid"]}
    status = call(
        f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
        {"spec": {"boundObjectRef": bound, "expirationSeconds": 3600}},
    )["status"]
    expires = status["expirationTimestamp"]
    if env.get("PLUGIN_STATED_SECONDS"):
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            seconds=float(env["PLUGIN_STATED_SECONDS"])
        )
        expires = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    # The token beside the log (0600), so a test can check the server refuses it once revoked.
    token_file = os.path.join(os.path.dirname(env["PLUGIN_LOG"]), f"{secret['name']}.token")
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(status["token"])
    with open(env["PLUGIN_LOG"], "a") as log:
        print(secret["name"], file=log)
    credential = {"token": status["token"], "expirationTimestamp": expires}
    print(
        json.dumps(
            {"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": credential}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

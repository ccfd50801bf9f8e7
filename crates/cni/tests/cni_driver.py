#!/usr/bin/env python3
"""An independent CNI runtime for trellis-cni: stdlib only, written from the CNI spec
(1.0 "Execution protocol", "Result types", "Error"), not from trellis's code.

Usage: cni_driver.py PLUGIN NETNS_PATH STATE_DIR

Runs, in the current network namespace (the "node"): VERSION, STATUS (1.1), ADD, CHECK with
prevResult, GC (1.1) listing the attachment as valid (must keep it: CHECK again), DEL with
prevResult, DEL again (must be idempotent), CHECK after DEL (must fail), and an ADD with an
unsupported cniVersion (must be error code 1). Validates each reply's shape. Prints one JSON line
{"ok": true, "steps": [...]} on success; exits non-zero with the reason otherwise.
"""

import ipaddress
import json
import os
import subprocess
import sys

CONTAINER_ID = "py-driver-0001"
IFNAME = "eth0"


def fail(step, why):
    print(json.dumps({"ok": False, "step": step, "why": why}))
    sys.exit(1)


def call(plugin, command, conf, netns, step):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_PATH": os.path.dirname(plugin),
    }
    if command not in ("VERSION", "STATUS", "GC"):
        env.update(CNI_CONTAINERID=CONTAINER_ID, CNI_NETNS=netns, CNI_IFNAME=IFNAME,
                   CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=driver")
    p = subprocess.run([plugin], input=json.dumps(conf).encode(), env=env,
                       capture_output=True, timeout=60)
    out = p.stdout.decode().strip()
    reply = None
    if out:
        try:
            reply = json.loads(out)
        except ValueError as e:
            fail(step, f"stdout is not JSON ({e}): {out!r}")
    return p.returncode, reply


def check_result(res, conf, netns):
    """Spec 1.0 'Success': interfaces, ips (with interface index), routes, dns."""
    if res.get("cniVersion") != conf["cniVersion"]:
        fail("ADD", f"result cniVersion {res.get('cniVersion')!r} != config's")
    ifaces = res.get("interfaces")
    if not isinstance(ifaces, list) or not ifaces:
        fail("ADD", "no interfaces")
    for i in ifaces:
        if not i.get("name"):
            fail("ADD", f"interface without name: {i}")
    ips = res.get("ips")
    if not isinstance(ips, list) or not ips:
        fail("ADD", "no ips")
    subnet = ipaddress.ip_network(conf["podCIDR"])
    for ip in ips:
        iface = ipaddress.ip_interface(ip["address"])
        if iface.ip not in subnet:
            fail("ADD", f"{iface} outside {subnet}")
        idx = ip.get("interface")
        if idx is None or not (0 <= idx < len(ifaces)):
            fail("ADD", f"ips[].interface {idx} does not index interfaces")
        if ifaces[idx].get("sandbox") != netns:
            fail("ADD", f"ips[].interface points at {ifaces[idx]}, not the sandbox {netns}")
        if "gateway" in ip:
            ipaddress.ip_address(ip["gateway"])
    for r in res.get("routes", []):
        ipaddress.ip_network(r["dst"])
        if "gw" in r:
            ipaddress.ip_address(r["gw"])
    if not isinstance(res.get("dns", {}), dict):
        fail("ADD", "dns is not an object")


def main():
    plugin, netns, state_dir = sys.argv[1:4]
    conf = {
        "cniVersion": "1.0.0",
        "name": "trellis-py",
        "type": "trellis-cni",
        "podCIDR": "10.69.1.0/24",
        "stateDir": state_dir,
    }
    steps = []

    code, v = call(plugin, "VERSION", {"cniVersion": "1.0.0"}, netns, "VERSION")
    if code != 0 or conf["cniVersion"] not in v.get("supportedVersions", []):
        fail("VERSION", f"exit {code}, reply {v}")
    steps.append("VERSION")

    v11 = dict(conf, cniVersion="1.1.0")
    code, out = call(plugin, "STATUS", v11, netns, "STATUS")
    if code != 0 or out is not None:
        fail("STATUS", f"exit {code}, output {out}")
    steps.append("STATUS")

    code, res = call(plugin, "ADD", conf, netns, "ADD")
    if code != 0:
        fail("ADD", f"exit {code}: {res}")
    check_result(res, conf, netns)
    steps.append("ADD " + res["ips"][0]["address"])

    with_prev = dict(conf, prevResult=res)
    code, out = call(plugin, "CHECK", with_prev, netns, "CHECK")
    if code != 0 or out is not None:
        fail("CHECK", f"exit {code}, output {out}")
    steps.append("CHECK")

    valid = [{"containerID": CONTAINER_ID, "ifname": IFNAME}]
    code, out = call(plugin, "GC", dict(v11, **{"cni.dev/valid-attachments": valid}), netns, "GC")
    if code != 0 or out is not None:
        fail("GC", f"exit {code}, output {out}")
    code, out = call(plugin, "CHECK", with_prev, netns, "CHECK after GC")
    if code != 0:
        fail("CHECK after GC", f"GC removed a valid attachment: exit {code}: {out}")
    steps.append("GC keeps the valid attachment")

    code, out = call(plugin, "DEL", with_prev, netns, "DEL")
    if code != 0 or out is not None:
        fail("DEL", f"exit {code}, output {out}")
    steps.append("DEL")

    code, out = call(plugin, "DEL", with_prev, netns, "DEL again")
    if code != 0:
        fail("DEL again", f"exit {code}: {out}")
    steps.append("DEL again")

    code, out = call(plugin, "CHECK", with_prev, netns, "CHECK after DEL")
    if code == 0 or not isinstance(out, dict) or "code" not in out:
        fail("CHECK after DEL", f"expected an error, got exit {code}: {out}")
    steps.append(f"CHECK after DEL -> code {out['code']}")

    code, out = call(plugin, "ADD", dict(conf, cniVersion="0.0.1"), netns, "bad version")
    if code == 0 or out.get("code") != 1 or not out.get("msg"):
        fail("bad version", f"expected error code 1, got exit {code}: {out}")
    steps.append("ADD bad version -> code 1")

    print(json.dumps({"ok": True, "steps": steps}))


if __name__ == "__main__":
    main()

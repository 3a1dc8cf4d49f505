#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Runs one v2k wave shard on a conversion host and returns what each VM did."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wave
short_description: Run (or check) a v2k wave plan on this host
description:
  - Runs C(v2k wave run --json PLAN) and returns its events as structured results; a
    resumed run skips the VMs its journal shows done.
  - In check mode runs C(v2k wave check --json PLAN) instead: nothing is migrated.
version_added: "0.1.0"
options:
  plan:
    description: The shard plan on this host (written by C(v2k wave assign)).
    type: path
    required: true
  v2k:
    description: The v2k binary.
    type: path
    default: /usr/local/bin/v2k
  retry_failed:
    description: Migrate again the VMs that failed in an earlier run of this plan.
    type: bool
    default: false
  fail_on_vm_failure:
    description: Fail the task when a VM failed or was not run (v2k exit status 1).
    type: bool
    default: true
  vsphere_password:
    description:
      - Password of the vSphere user, handed to v2k in its environment
        (V2K_VSPHERE_PASSWORD), never on a command line; not logged.
    type: str
    required: false
author:
  - v2k developers
"""

EXAMPLES = r"""
- name: Run this host's shard
  v2k.migration.wave:
    plan: /var/lib/v2k/shards/conv1.yaml
    vsphere_password: "{{ vault_vsphere_password }}"
  no_log: false
"""

RETURN = r"""
exit_code:
  description: v2k's exit status (0 all migrated, 1 some failed or not run, 2 plan error, 3 gate held).
  type: int
  returned: always
vms:
  description: One entry per VM finished or skipped in this run (name, wave, status, result, reason, seconds).
  type: list
  returned: always
migrated:
  description: Names of the VMs migrated in this run.
  type: list
  returned: always
failed:
  description: Names of the VMs that failed or were not run.
  type: list
  returned: always
run_dir:
  description: The shard's run directory (journal, wave reports).
  type: str
  returned: when the run started
check:
  description: The plan check (check mode).
  type: dict
  returned: in check mode
"""

import json

from ansible.module_utils.basic import AnsibleModule


def events(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="path", required=True),
            v2k=dict(type="path", default="/usr/local/bin/v2k"),
            retry_failed=dict(type="bool", default=False),
            fail_on_vm_failure=dict(type="bool", default=True),
            vsphere_password=dict(type="str", required=False, no_log=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    env = {}
    if p["vsphere_password"]:
        env["V2K_VSPHERE_PASSWORD"] = p["vsphere_password"]
    if module.check_mode:
        argv = [p["v2k"], "wave", "check", "--json", p["plan"]]
    else:
        argv = [p["v2k"], "wave", "run", "--json", p["plan"]]
        if p["retry_failed"]:
            argv.append("--retry-failed")
    rc, out, err = module.run_command(argv, environ_update=env)
    evs = events(out)
    result = dict(changed=False, exit_code=rc, vms=[], migrated=[], failed=[], stderr_tail=err[-4000:])
    if module.check_mode:
        check = next((e for e in evs if e.get("type") == "check"), {})
        result["check"] = check
        result["vms"] = [
            dict(name=v.get("name"), wave=v.get("wave"), disks=v.get("disks"), error=v.get("error"))
            for v in check.get("vms", [])
        ]
        result["failed"] = [v["name"] for v in result["vms"] if v.get("error")]
        if rc == 2 or (rc == 1 and p["fail_on_vm_failure"]):
            module.fail_json(msg="v2k wave check %s: exit %d" % (p["plan"], rc), **result)
        module.exit_json(**result)
    started = set()
    for e in evs:
        t = e.get("type")
        if t == "vm-started":
            started.add(e.get("vm"))
        elif t == "vm-finished":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status=e.get("status"),
                                      result=e.get("result"), reason=e.get("reason"),
                                      seconds=e.get("seconds")))
            (result["migrated"] if e.get("status") == "migrated" else result["failed"]).append(e.get("vm"))
        elif t == "vm-verified":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status="migrated",
                                      result="verified earlier"))
        elif t == "vm-not-run":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status="not-run",
                                      reason=e.get("reason")))
            result["failed"].append(e.get("vm"))
        elif t == "run-finished":
            result["run_dir"] = e.get("run-dir")
    # A change is a VM this run started: a resumed run of finished VMs changes nothing.
    result["changed"] = bool(started)
    if rc == 2 or rc == 3 or (rc == 1 and p["fail_on_vm_failure"]) or rc not in (0, 1, 2, 3):
        module.fail_json(msg="v2k wave run %s: exit %d" % (p["plan"], rc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

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
  plans:
    description:
      - Several shard plans, run one after the other in this order (a host's shards
        share its part of the ESXi budget, so they never run at once). Stops at the
        first plan error (exit 2) or held gate (exit 3). Use this form with C(async)
        to follow a long run (the playbook fetches the journals while it runs).
    type: list
    elements: path
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
failed_vms:
  description: Names of the VMs that failed or were not run (not C(failed), which Ansible reserves).
  type: list
  returned: always
run_dir:
  description: The shard's run directory (journal, wave reports); the last one with C(plans).
  type: str
  returned: when the run started
runs:
  description: With C(plans), one entry per plan run (plan, exit_code, vms, migrated, failed_vms, run_dir).
  type: list
  returned: with plans
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


def run_plan(module, plan, env):
    """One plan: `v2k wave run` (or `wave check`), its events read into a result."""
    p = module.params
    if module.check_mode:
        argv = [p["v2k"], "wave", "check", "--json", plan]
    else:
        argv = [p["v2k"], "wave", "run", "--json", plan]
        if p["retry_failed"]:
            argv.append("--retry-failed")
    rc, out, err = module.run_command(argv, environ_update=env)
    evs = events(out)
    # Not `failed`: Ansible reads a truthy `failed` in a result as the task failing.
    result = dict(plan=plan, changed=False, exit_code=rc, vms=[], migrated=[], failed_vms=[],
                  stderr_tail=err[-4000:])
    if module.check_mode:
        check = next((e for e in evs if e.get("type") == "check"), {})
        result["check"] = check
        result["vms"] = [
            dict(name=v.get("name"), wave=v.get("wave"), disks=v.get("disks"), error=v.get("error"))
            for v in check.get("vms", [])
        ]
        result["failed_vms"] = [v["name"] for v in result["vms"] if v.get("error")]
        return result
    started = set()
    for e in evs:
        t = e.get("type")
        if t == "vm-started":
            started.add(e.get("vm"))
        elif t == "vm-finished":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status=e.get("status"),
                                      result=e.get("result"), reason=e.get("reason"),
                                      seconds=e.get("seconds")))
            (result["migrated"] if e.get("status") == "migrated" else result["failed_vms"]).append(e.get("vm"))
        elif t == "vm-verified":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status="migrated",
                                      result="verified earlier"))
        elif t == "vm-not-run":
            result["vms"].append(dict(name=e.get("vm"), wave=e.get("wave"), status="not-run",
                                      reason=e.get("reason")))
            result["failed_vms"].append(e.get("vm"))
        elif t == "run-finished":
            result["run_dir"] = e.get("run-dir")
    # A change is a VM this run started: a resumed run of finished VMs changes nothing.
    result["changed"] = bool(started)
    return result


def bad(rc, fail_on_vm_failure):
    """Whether v2k's exit status fails the task (docs/scale-out.md)."""
    return rc in (2, 3) or (rc == 1 and fail_on_vm_failure) or rc not in (0, 1, 2, 3)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="path"),
            plans=dict(type="list", elements="path"),
            v2k=dict(type="path", default="/usr/local/bin/v2k"),
            retry_failed=dict(type="bool", default=False),
            fail_on_vm_failure=dict(type="bool", default=True),
            vsphere_password=dict(type="str", required=False, no_log=True),
        ),
        required_one_of=[("plan", "plans")],
        mutually_exclusive=[("plan", "plans")],
        supports_check_mode=True,
    )
    p = module.params
    env = {}
    if p["vsphere_password"]:
        env["V2K_VSPHERE_PASSWORD"] = p["vsphere_password"]
    verb = "check" if module.check_mode else "run"
    if p["plan"]:
        result = run_plan(module, p["plan"], env)
        del result["plan"]
        if bad(result["exit_code"], p["fail_on_vm_failure"]):
            module.fail_json(msg="v2k wave %s %s: exit %d" % (verb, p["plan"], result["exit_code"]), **result)
        module.exit_json(**result)
    runs = []
    total = dict(changed=False, exit_code=0, vms=[], migrated=[], failed_vms=[], runs=runs)
    for plan in p["plans"]:
        r = run_plan(module, plan, env)
        runs.append(r)
        total["changed"] = total["changed"] or r["changed"]
        total["exit_code"] = max(total["exit_code"], r["exit_code"])
        for k in ("vms", "migrated", "failed_vms"):
            total[k].extend(r[k])
        if r.get("run_dir"):
            total["run_dir"] = r["run_dir"]
        if r["exit_code"] not in (0, 1):
            # A plan error or a held gate: the next shard would meet the same.
            break
    failing = [r for r in runs if bad(r["exit_code"], p["fail_on_vm_failure"])]
    if failing:
        module.fail_json(msg="; ".join("v2k wave %s %s: exit %d" % (verb, r["plan"], r["exit_code"])
                                       for r in failing), **total)
    module.exit_json(**total)


if __name__ == "__main__":
    main()

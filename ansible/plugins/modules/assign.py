#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Splits a v2k wave plan over conversion hosts (`v2k wave assign`) on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: assign
short_description: Split a v2k wave plan over conversion hosts
description:
  - Runs C(v2k wave assign --json PLAN --hosts H,... -o OUT_DIR) and returns the
    assignment record (docs/scale-out.md). Reassigns when OUT_DIR holds an earlier
    assignment, with the hosts in I(exclude) lost and the I(journals) fetched so far.
  - Reading vSphere VMs (their size and ESXi host) needs the vCenter password:
    I(vsphere_password) reaches v2k in its environment only, never on a command line
    (a C(command) task's environment is visible in verbose logs and the process list).
version_added: "0.1.0"
options:
  plan:
    description: The wave plan.
    type: path
    required: true
  hosts:
    description: The conversion hosts' inventory names.
    type: list
    elements: str
    required: true
  out_dir:
    description: Where the shards and assignment.json go (and an earlier assignment is).
    type: path
    required: true
  exclude:
    description: Lost hosts; their unfinished VMs move to the others.
    type: list
    elements: str
    default: []
  journals:
    description: Run directories fetched so far (what a reassignment knows finished).
    type: list
    elements: path
    default: []
  v2k:
    description: The v2k binary.
    type: path
    default: v2k
  vsphere_password:
    description: Password of the vSphere user (environment V2K_VSPHERE_PASSWORD); not logged.
    type: str
    required: false
author:
  - v2k developers
"""

EXAMPLES = r"""
- name: Split the plan
  v2k.migration.assign:
    plan: /srv/v2k/plan.yaml
    hosts: "{{ groups['conversion_hosts'] }}"
    out_dir: /srv/v2k/work/shards
    vsphere_password: "{{ vault_vsphere_password }}"
"""

RETURN = r"""
assignment:
  description: The assignment record (assignment.json), generation, shards, moved VMs.
  type: dict
  returned: success
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="path", required=True),
            hosts=dict(type="list", elements="str", required=True),
            out_dir=dict(type="path", required=True),
            exclude=dict(type="list", elements="str", default=[]),
            journals=dict(type="list", elements="path", default=[]),
            v2k=dict(type="str", default="v2k"),
            vsphere_password=dict(type="str", required=False, no_log=True),
        ),
        supports_check_mode=False,
    )
    p = module.params
    env = {}
    if p["vsphere_password"]:
        env["V2K_VSPHERE_PASSWORD"] = p["vsphere_password"]
    before = None
    try:
        with open(os.path.join(p["out_dir"], "assignment.json")) as f:
            before = json.load(f).get("generation")
    except (OSError, ValueError):
        pass
    argv = [p["v2k"], "wave", "assign", p["plan"], "--hosts", ",".join(p["hosts"]),
            "-o", p["out_dir"], "--json"]
    argv += ["--exclude=" + h for h in p["exclude"]]
    argv += ["--journal=" + j for j in p["journals"]]
    rc, out, err = module.run_command(argv, environ_update=env)
    if rc != 0:
        module.fail_json(msg="v2k wave assign %s: exit %d: %s" % (p["plan"], rc, err.strip()[-4000:]),
                         exit_code=rc)
    try:
        record = json.loads(out)
    except ValueError:
        module.fail_json(msg="v2k wave assign printed no JSON record", stdout_tail=out[-2000:])
    # A change is a new generation: a first assignment or a lost host's VMs moved.
    module.exit_json(changed=record.get("generation") != before, assignment=record)


if __name__ == "__main__":
    main()

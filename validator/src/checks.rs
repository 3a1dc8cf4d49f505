//! The checks a validation boot is judged by, each passed or failed with its reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Evidence;

/// What the converted guest must show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Expectations {
    /// Mount points that must be mounted (besides `/`), e.g. `/data`.
    pub mounts: Vec<String>,
    /// NICs that must be up with this MAC (and name, when one is expected) and hold
    /// an IPv4 address.
    pub nics: Vec<ExpectedNic>,
    /// The firmware the guest must have been started by (`firmware` check); `None`
    /// when the guest's agent does not report it (Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<ExpectedFirmware>,
    /// The default gateway the source's configuration sets (`route` check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Resolvers the source's configuration sets (`dns` check): each must be in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Services the source enabled (`services` check): each active, or a oneshot
    /// that ran and succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// On the VM's own network (after cutover): its default gateway must answer
    /// (`gateway`) and its resolvers answer or be those the source configured
    /// (`resolvers`). Off for a validation boot, whose network is a stand-in.
    #[serde(default)]
    pub reachability: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ExpectedFirmware {
    pub efi: bool,
    pub secure_boot: bool,
}

impl ExpectedFirmware {
    fn describe(efi: bool, secure_boot: Option<bool>) -> String {
        match (efi, secure_boot) {
            (false, _) => "BIOS".into(),
            (true, Some(true)) => "UEFI with Secure Boot enforcing".into(),
            (true, _) => "UEFI, Secure Boot off".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpectedNic {
    /// The name the guest must give it; `None` when the guest names it itself (a
    /// Windows adapter, "Ethernet 2"), so that only the MAC and address count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub mac: String,
    /// Static `ADDRESS/PREFIX`es the source configured on it (`static-ip:<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_ipv4: Vec<String>,
}

impl ExpectedNic {
    /// The check id: `nic:<name>`, or `nic:<mac>` for a NIC named by the guest.
    pub(crate) fn check_id(&self) -> String {
        format!("nic:{}", self.name.as_deref().unwrap_or(&self.mac))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// Stable id: `agent-report`, `root-rw`, `mounts`, `nic:<name>` (`nic:<mac>` when
    /// the guest names the NIC), `static-ip:<name>`, `route`, `dns`, `firmware`,
    /// `failed-units`, `services`; after cutover also `gateway` and `resolvers`.
    /// How the guest stopped afterwards is evidence (`clean-shutdown`), not a check:
    /// a guest without an ACPI handler (no logind) is still a working guest.
    pub id: String,
    pub passed: bool,
    pub reason: String,
}

fn check(id: impl Into<String>, passed: bool, reason: impl Into<String>) -> Check {
    Check {
        id: id.into(),
        passed,
        reason: reason.into(),
    }
}

/// MACs compared by their hex digits: Linux writes `00:50:56:aa:bb:cc`, Windows
/// tools `00-50-56-AA-BB-CC`.
fn same_mac(a: &str, b: &str) -> bool {
    let hex = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (hex(a), hex(b));
    a.len() == 12 && a == b
}

/// Judges the evidence. Without an agent report every guest-side check fails with
/// the reason the report is missing.
pub fn judge(expect: &Expectations, ev: &Evidence, timeout: Duration) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(a) = &ev.agent else {
        let why = if let Some(d) = &ev.diagnosis {
            d.clone()
        } else if let Some(e) = &ev.ended_early {
            format!("the VM stopped before reporting: {e}")
        } else {
            format!("no report within {} s", timeout.as_secs())
        };
        out.push(check("agent-report", false, why.clone()));
        out.push(check("root-rw", false, "not reported"));
        out.push(check("mounts", false, "not reported"));
        for n in &expect.nics {
            out.push(check(n.check_id(), false, "not reported"));
        }
        for id in expected_network_ids(expect) {
            out.push(check(id, false, "not reported"));
        }
        out.push(check("failed-units", false, "not reported"));
        if !expect.services.is_empty() {
            out.push(check("services", false, "not reported"));
        }
        if expect.reachability {
            out.push(check("gateway", false, "not reported"));
            out.push(check("resolvers", false, "not reported"));
        }
        return out;
    };
    out.push(check(
        "agent-report",
        true,
        format!(
            "reported after {:.1} s",
            ev.boot_seconds.unwrap_or_default()
        ),
    ));
    out.push(check(
        "root-rw",
        a.root_rw,
        if a.root_rw {
            "/ is mounted read-write"
        } else {
            "/ is read-only"
        },
    ));
    let mut missing: Vec<String> = a
        .mounts
        .iter()
        .filter(|m| !m.ok)
        .map(|m| m.target.clone())
        .collect();
    for m in &expect.mounts {
        if !a.mounts.iter().any(|r| &r.target == m && r.ok) && !missing.contains(m) {
            missing.push(m.clone());
        }
    }
    let present: Vec<&str> = a
        .mounts
        .iter()
        .filter(|m| m.ok)
        .map(|m| m.target.as_str())
        .collect();
    out.push(if missing.is_empty() {
        check(
            "mounts",
            true,
            format!("all fstab mounts present: {}", present.join(", ")),
        )
    } else {
        check(
            "mounts",
            false,
            format!("not mounted: {}", missing.join(", ")),
        )
    });
    for n in &expect.nics {
        let id = n.check_id();
        let found = a.nics.iter().find(|r| same_mac(&r.mac, &n.mac));
        out.push(match (found, &n.name) {
            (None, _) => check(id, false, format!("no NIC with MAC {}", n.mac)),
            (Some(r), Some(want)) if &r.name != want => check(
                id,
                false,
                format!("MAC {} is named {}, expected {want}", n.mac, r.name),
            ),
            (Some(r), _) if r.ipv4.is_empty() => {
                check(id, false, format!("{} has no IPv4 address", r.name))
            }
            (Some(r), _) => check(
                id,
                true,
                format!("{} {} has {}", r.name, r.mac, r.ipv4.join(", ")),
            ),
        });
    }
    judge_network(expect, a, &mut out);
    out.push(if a.failed_units.is_empty() {
        check("failed-units", true, "no failed systemd units")
    } else {
        check(
            "failed-units",
            false,
            format!("failed: {}", a.failed_units.join(", ")),
        )
    });
    if !expect.services.is_empty() {
        out.push(judge_services(&expect.services, a));
    }
    if expect.reachability {
        out.push(judge_gateway(a));
        out.push(judge_resolvers(expect, a));
    }
    out
}

/// Every service the source enabled runs: `active`, or `exited` (a oneshot that ran
/// and succeeded). Anything else is named with its state.
fn judge_services(want: &[String], a: &crate::agent::AgentReport) -> Check {
    let mut bad = Vec::new();
    for w in want {
        match a.services.iter().find(|(n, _)| n == w) {
            Some((_, st)) if st == "active" || st == "exited" => {}
            Some((_, st)) => bad.push(format!("{w} {st}")),
            None => bad.push(format!("{w} not reported")),
        }
    }
    if bad.is_empty() {
        check(
            "services",
            true,
            format!(
                "{} service(s) enabled in the source are running: {}",
                want.len(),
                want.join(", ")
            ),
        )
    } else {
        check(
            "services",
            false,
            format!("enabled in the source but not running: {}", bad.join(", ")),
        )
    }
}

/// The default gateway answers (ping, or its link-layer address resolved).
fn judge_gateway(a: &crate::agent::AgentReport) -> Check {
    if a.gateway_answers.is_empty() {
        return check("gateway", false, "no default gateway");
    }
    let silent: Vec<&str> = a
        .gateway_answers
        .iter()
        .filter(|(_, ok)| *ok == Some(false))
        .map(|(g, _)| g.as_str())
        .collect();
    let unknown: Vec<&str> = a
        .gateway_answers
        .iter()
        .filter(|(_, ok)| ok.is_none())
        .map(|(g, _)| g.as_str())
        .collect();
    let all: Vec<&str> = a.gateway_answers.iter().map(|(g, _)| g.as_str()).collect();
    if !silent.is_empty() {
        check(
            "gateway",
            false,
            format!("default gateway {} did not answer", silent.join(", ")),
        )
    } else if !unknown.is_empty() {
        check(
            "gateway",
            false,
            format!(
                "default gateway {} could not be asked (no ping or bash in the guest)",
                unknown.join(", ")
            ),
        )
    } else {
        check(
            "gateway",
            true,
            format!("default gateway {} answers", all.join(", ")),
        )
    }
}

/// A resolver answers a DNS query; failing that, the guest at least uses the
/// resolvers its source configured.
fn judge_resolvers(expect: &Expectations, a: &crate::agent::AgentReport) -> Check {
    let answering: Vec<&str> = a
        .dns_answers
        .iter()
        .filter(|(_, ok)| *ok == Some(true))
        .map(|(d, _)| d.as_str())
        .collect();
    if !answering.is_empty() {
        return check(
            "resolvers",
            true,
            format!("resolver {} answers", answering.join(", ")),
        );
    }
    let in_use = if a.dns.is_empty() {
        "none".to_string()
    } else {
        a.dns.join(", ")
    };
    if !expect.dns.is_empty() && expect.dns.iter().all(|d| a.dns.contains(d)) {
        check(
            "resolvers",
            true,
            format!(
                "no resolver answered, but the guest uses {}, as its source configured",
                expect.dns.join(", ")
            ),
        )
    } else {
        check(
            "resolvers",
            false,
            format!("no resolver answered (in use: {in_use})"),
        )
    }
}

/// The ids of the configuration checks `expect` asks for, in report order.
fn expected_network_ids(expect: &Expectations) -> Vec<String> {
    let mut ids: Vec<String> = expect
        .nics
        .iter()
        .filter(|n| !n.static_ipv4.is_empty())
        .map(|n| format!("static-ip:{}", n.name.as_deref().unwrap_or(&n.mac)))
        .collect();
    if expect.gateway.is_some() {
        ids.push("route".into());
    }
    if !expect.dns.is_empty() {
        ids.push("dns".into());
    }
    if expect.firmware.is_some() {
        ids.push("firmware".into());
    }
    ids
}

/// Static addresses, the default route, resolvers and firmware: what the source's
/// configuration set, compared with what the guest reports (reasons say both).
fn judge_network(expect: &Expectations, a: &crate::agent::AgentReport, out: &mut Vec<Check>) {
    for n in expect.nics.iter().filter(|n| !n.static_ipv4.is_empty()) {
        let id = format!("static-ip:{}", n.name.as_deref().unwrap_or(&n.mac));
        let want = n.static_ipv4.join(", ");
        out.push(match a.nics.iter().find(|r| same_mac(&r.mac, &n.mac)) {
            None => check(
                id,
                false,
                format!("expected {want}; no NIC with MAC {}", n.mac),
            ),
            Some(r) => {
                let missing: Vec<&String> = n
                    .static_ipv4
                    .iter()
                    .filter(|w| !r.ipv4.contains(w))
                    .collect();
                let found = if r.ipv4.is_empty() {
                    "none".to_string()
                } else {
                    r.ipv4.join(", ")
                };
                if missing.is_empty() {
                    check(id, true, format!("{} has {want}, as configured", r.name))
                } else {
                    check(
                        id,
                        false,
                        format!("expected {want} on {}, found {found}", r.name),
                    )
                }
            }
        });
    }
    let found_routes = || {
        if a.gateways.is_empty() {
            "no default route".to_string()
        } else {
            a.gateways
                .iter()
                .map(|g| format!("via {} dev {}", g.via, g.dev))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(gw) = &expect.gateway {
        out.push(match a.gateways.iter().find(|g| &g.via == gw) {
            Some(g) => check(
                "route",
                true,
                format!("default route via {gw} dev {}, as configured", g.dev),
            ),
            None => check(
                "route",
                false,
                format!(
                    "expected a default route via {gw}, found {}",
                    found_routes()
                ),
            ),
        });
    }
    if !expect.dns.is_empty() {
        let want = expect.dns.join(", ");
        let missing = expect.dns.iter().any(|d| !a.dns.contains(d));
        let found = if a.dns.is_empty() {
            "none".to_string()
        } else {
            a.dns.join(", ")
        };
        out.push(if missing {
            check(
                "dns",
                false,
                format!("expected resolvers {want}, found {found}"),
            )
        } else {
            check("dns", true, format!("resolvers {found} include {want}"))
        });
    }
    if let Some(fw) = expect.firmware {
        let want = ExpectedFirmware::describe(fw.efi, Some(fw.secure_boot));
        out.push(match &a.firmware {
            None => check("firmware", false, format!("expected {want}; not reported")),
            Some(r) => {
                let found = ExpectedFirmware::describe(r.efi, r.secure_boot);
                let ok = r.efi == fw.efi && (!fw.efi || r.secure_boot == Some(fw.secure_boot));
                if ok {
                    check("firmware", true, format!("{found}, as the VM declares"))
                } else {
                    check("firmware", false, format!("expected {want}, found {found}"))
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::find_report;

    fn evidence(line: &str) -> Evidence {
        Evidence {
            agent: find_report(line),
            boot_seconds: Some(30.0),
            clean_shutdown: true,
            ..Evidence::default()
        }
    }

    fn expect() -> Expectations {
        Expectations {
            mounts: vec!["/data".into()],
            nics: vec![ExpectedNic {
                name: Some("ens192".into()),
                mac: "00:50:56:aa:bb:cc".into(),
                static_ipv4: vec![],
            }],
            ..Expectations::default()
        }
    }

    #[test]
    fn a_good_report_passes_every_check() {
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{"target":"/data","ok":true}],"nics":[{"name":"ens192","mac":"00:50:56:AA:BB:CC","ipv4":["10.0.2.15/24"]}],"failed-units":[],"uptime":20}"#,
        );
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        assert!(c.iter().all(|c| c.passed), "{c:?}");
    }

    #[test]
    fn services_gateway_and_resolvers_are_judged_after_cutover() {
        let line = |services: &str, gw: &str, dns: &str| {
            evidence(&format!(
                r#"V2K-AGENT {{"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{{"target":"/data","ok":true}}],"nics":[{{"name":"ens192","mac":"00:50:56:aa:bb:cc","ipv4":["10.77.0.5/24"]}}],"failed-units":[],"uptime":20,"gateways":[{{"via":"10.77.0.1","dev":"ens192"}}],"dns":["10.77.0.1"],"gateway-answers":[{gw}],"dns-answers":[{dns}],"services":[{services}]}}"#
            ))
        };
        let mut e = expect();
        e.services = vec!["ssh.service".into(), "e2scrub_reap.service".into()];
        e.reachability = true;
        let by = |c: &[Check], id: &str| c.iter().find(|c| c.id == id).unwrap().clone();

        let good = line(
            r#"["e2scrub_reap.service","exited"],["ssh.service","active"]"#,
            r#"["10.77.0.1",true]"#,
            r#"["10.77.0.1",true]"#,
        );
        let c = judge(&e, &good, Duration::from_secs(60));
        assert!(c.iter().all(|c| c.passed), "{c:?}");
        assert!(by(&c, "gateway").reason.contains("10.77.0.1 answers"));

        let bad = line(
            r#"["ssh.service","failed"]"#,
            r#"["10.77.0.1",false]"#,
            r#"["10.77.0.1",false]"#,
        );
        let c = judge(&e, &bad, Duration::from_secs(60));
        let s = by(&c, "services");
        assert!(!s.passed, "{s:?}");
        assert!(s.reason.contains("ssh.service failed"), "{s:?}");
        assert!(
            s.reason.contains("e2scrub_reap.service not reported"),
            "{s:?}"
        );
        let g = by(&c, "gateway");
        assert!(!g.passed && g.reason.contains("did not answer"), "{g:?}");
        let r = by(&c, "resolvers");
        assert!(!r.passed && r.reason.contains("in use: 10.77.0.1"), "{r:?}");

        // No resolver answers, but the guest uses the one its source configured.
        e.dns = vec!["10.77.0.1".into()];
        let c = judge(&e, &bad, Duration::from_secs(60));
        assert!(by(&c, "resolvers").passed, "{c:?}");
        // A guest with no tool to ask its gateway is not called reachable.
        let unknown = line("", r#"["10.77.0.1",null]"#, "");
        let c = judge(&e, &unknown, Duration::from_secs(60));
        assert!(!by(&c, "gateway").passed, "{c:?}");

        // A validation boot's stand-in network is not judged; no report fails all.
        e.reachability = false;
        let c = judge(&e, &bad, Duration::from_secs(60));
        assert!(c.iter().all(|c| c.id != "gateway" && c.id != "resolvers"));
        e.reachability = true;
        let c = judge(&e, &Evidence::default(), Duration::from_secs(60));
        for id in ["services", "gateway", "resolvers"] {
            assert!(!by(&c, id).passed, "{id}: {c:?}");
        }
    }

    #[test]
    fn a_renamed_nic_and_a_missing_mount_fail_with_reasons() {
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":false,"boot":true,"root-rw":true,"mounts":[],"nics":[{"name":"enp1s0","mac":"00:50:56:aa:bb:cc","ipv4":["10.0.2.15/24"]}],"failed-units":["foo.service"],"uptime":20}"#,
        );
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        let by = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        assert!(!by("mounts").passed && by("mounts").reason.contains("/data"));
        assert!(!by("nic:ens192").passed && by("nic:ens192").reason.contains("enp1s0"));
        assert!(!by("failed-units").passed);
    }

    #[test]
    fn a_nic_the_guest_names_itself_is_judged_by_mac_and_address() {
        // A Windows guest calls its new virtio adapter whatever it likes.
        let expect = Expectations {
            mounts: vec![],
            nics: vec![
                ExpectedNic {
                    name: None,
                    mac: "00:50:56:aa:bb:cc".into(),
                    static_ipv4: vec![],
                },
                ExpectedNic {
                    name: None,
                    mac: "00:50:56:aa:bb:dd".into(),
                    static_ipv4: vec![],
                },
            ],
            ..Expectations::default()
        };
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{"target":"C:","ok":true}],"nics":[{"name":"Ethernet 2","mac":"00-50-56-AA-BB-CC","ipv4":["10.0.2.15/24"]},{"name":"Ethernet 3","mac":"00:50:56:aa:bb:dd","ipv4":[]}],"failed-units":[],"uptime":90}"#,
        );
        let c = judge(&expect, &ev, Duration::from_secs(60));
        let by = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        assert!(by("nic:00:50:56:aa:bb:cc").passed, "{c:?}");
        let second = by("nic:00:50:56:aa:bb:dd");
        assert!(
            !second.passed && second.reason.contains("no IPv4"),
            "{second:?}"
        );
    }

    fn static_expect() -> Expectations {
        Expectations {
            mounts: vec![],
            nics: vec![ExpectedNic {
                name: Some("ens192".into()),
                mac: "00:50:56:aa:bb:cc".into(),
                static_ipv4: vec!["10.0.2.50/24".into()],
            }],
            firmware: Some(ExpectedFirmware {
                efi: true,
                secure_boot: false,
            }),
            gateway: Some("10.0.2.2".into()),
            dns: vec!["10.0.2.3".into()],
            ..Expectations::default()
        }
    }

    #[test]
    fn static_address_route_dns_and_firmware_as_configured_pass() {
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[],"nics":[{"name":"ens192","mac":"00:50:56:aa:bb:cc","ipv4":["10.0.2.50/24"]}],"failed-units":[],"uptime":20,"firmware":{"efi":true,"secure-boot":false},"gateways":[{"via":"10.0.2.2","dev":"ens192"}],"dns":["10.0.2.3"]}"#,
        );
        let c = judge(&static_expect(), &ev, Duration::from_secs(60));
        assert!(c.iter().all(|c| c.passed), "{c:?}");
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        for id in ["static-ip:ens192", "route", "dns", "firmware"] {
            assert!(ids.contains(&id), "{ids:?}");
        }
    }

    #[test]
    fn a_lost_static_address_route_and_resolver_fail_saying_expected_and_found() {
        // What a NIC renamed on KVM looks like: the keyfile no longer applies, and
        // NetworkManager's default DHCP profile takes the NIC; BIOS boot instead of UEFI.
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[],"nics":[{"name":"ens192","mac":"00:50:56:aa:bb:cc","ipv4":["10.0.2.15/24"]}],"failed-units":[],"uptime":20,"firmware":{"efi":false,"secure-boot":null},"gateways":[],"dns":["192.0.2.1"]}"#,
        );
        let c = judge(&static_expect(), &ev, Duration::from_secs(60));
        let by = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        let ip = by("static-ip:ens192");
        assert!(!ip.passed, "{ip:?}");
        assert!(
            ip.reason.contains("expected 10.0.2.50/24") && ip.reason.contains("found 10.0.2.15/24")
        );
        let route = by("route");
        assert!(
            !route.passed && route.reason.contains("no default route"),
            "{route:?}"
        );
        let dns = by("dns");
        assert!(
            !dns.passed && dns.reason.contains("found 192.0.2.1"),
            "{dns:?}"
        );
        let fw = by("firmware");
        assert!(
            !fw.passed
                && fw
                    .reason
                    .contains("expected UEFI, Secure Boot off, found BIOS"),
            "{fw:?}"
        );
        // Secure Boot expected but off.
        let mut e = static_expect();
        e.firmware = Some(ExpectedFirmware {
            efi: true,
            secure_boot: true,
        });
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[],"nics":[],"failed-units":[],"uptime":20,"firmware":{"efi":true,"secure-boot":false}}"#,
        );
        let c = judge(&e, &ev, Duration::from_secs(60));
        let fw = c.iter().find(|c| c.id == "firmware").unwrap();
        assert!(
            !fw.passed && fw.reason.contains("Secure Boot enforcing"),
            "{fw:?}"
        );
        // An agent without these fields fails them as not reported, never passes them.
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[],"nics":[{"name":"ens192","mac":"00:50:56:aa:bb:cc","ipv4":["10.0.2.50/24"]}],"failed-units":[],"uptime":20}"#,
        );
        let c = judge(&static_expect(), &ev, Duration::from_secs(60));
        assert!(!c.iter().find(|c| c.id == "firmware").unwrap().passed);
        assert!(!c.iter().find(|c| c.id == "route").unwrap().passed);
    }

    #[test]
    fn no_report_fails_with_the_diagnosis() {
        let ev = Evidence {
            timed_out: true,
            diagnosis: crate::diagnose(
                "Begin: ...\nALERT!  /dev/sda1 does not exist.  Dropping to a shell!\n",
            ),
            ..Evidence::default()
        };
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        assert!(!c[0].passed);
        assert!(c[0].reason.contains("root filesystem"), "{}", c[0].reason);
    }
}

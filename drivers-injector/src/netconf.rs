//! Static IPv4 settings read from a guest's network configuration, in each format the
//! injector knows (NetworkManager keyfiles, ifcfg files, netplan YAML, ifupdown,
//! systemd-networkd), so that the validation boot can check that the address, the
//! default gateway and the resolvers the VM had on VMware are the ones it has on KVM.
//! These are readers of untrusted guest text: every value is parsed as an IPv4
//! address (with a prefix where one belongs) and dropped when it is not one, and the
//! number of values kept per file is capped.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Most addresses, or resolvers, kept from one configuration (NetworkManager numbers
/// `address1`..; real configurations hold a handful).
const MAX_VALUES: usize = 16;

/// A NIC's static IPv4 configuration. Absent (`None` where it is held) when the NIC
/// uses DHCP or the file says nothing about IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StaticIpv4 {
    /// `ADDRESS/PREFIX`, e.g. `192.0.2.10/24`.
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl StaticIpv4 {
    /// `Some` only when an address was found: a gateway without an address is not a
    /// static configuration we can check.
    fn nonempty(self) -> Option<StaticIpv4> {
        (!self.addresses.is_empty()).then_some(self)
    }

    fn add_address(&mut self, cidr: Option<String>) {
        if let Some(c) = cidr {
            if self.addresses.len() < MAX_VALUES && !self.addresses.contains(&c) {
                self.addresses.push(c);
            }
        }
    }

    fn add_dns(&mut self, list: &str) {
        for d in list.split([';', ',', ' ', '\t']).filter_map(ipv4) {
            if self.dns.len() < MAX_VALUES && !self.dns.contains(&d) {
                self.dns.push(d);
            }
        }
    }
}

/// A dotted IPv4 address, normalised; `None` for anything else.
fn ipv4(s: &str) -> Option<String> {
    s.trim()
        .trim_matches(['"', '\''])
        .parse::<Ipv4Addr>()
        .ok()
        .map(|a| a.to_string())
}

/// `ADDR/PREFIX`, normalised; a bare address gets `default_prefix` when given.
fn cidr(s: &str, default_prefix: Option<u8>) -> Option<String> {
    let s = s.trim().trim_matches(['"', '\'']);
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, p.trim().parse::<u8>().ok()?),
        None => (s, default_prefix?),
    };
    (prefix <= 32).then_some(())?;
    Some(format!("{}/{prefix}", ipv4(addr)?))
}

/// The prefix length of a dotted netmask (`255.255.255.0` → 24); `None` when the
/// mask is not contiguous.
fn mask_prefix(mask: &str) -> Option<u8> {
    let bits = u32::from(
        mask.trim()
            .trim_matches(['"', '\''])
            .parse::<Ipv4Addr>()
            .ok()?,
    );
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The `key=value` pairs of one `[section]` of an INI-style file (keyfile, .network).
fn ini_section<'a>(text: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l == format!("[{section}]");
        } else if inside && !l.starts_with(['#', ';']) {
            if let Some((k, v)) = l.split_once('=') {
                out.push((k.trim(), v.trim()));
            }
        }
    }
    out
}

/// A NetworkManager keyfile's `[ipv4]` when `method=manual`: `address1=ADDR/P[,GW]`
/// (and `address2`.. or the old `addresses1=ADDR;P;GW;`), `gateway=`, `dns=a;b;`.
pub fn nm_keyfile(text: &str) -> Option<StaticIpv4> {
    let kv = ini_section(text, "ipv4");
    if !kv.iter().any(|(k, v)| *k == "method" && *v == "manual") {
        return None;
    }
    let mut s = StaticIpv4::default();
    for (k, v) in &kv {
        let numbered = |p: &str| {
            k.strip_prefix(p)
                .is_some_and(|n| n.is_empty() || n.bytes().all(|b| b.is_ascii_digit()))
        };
        if numbered("addresses") && v.contains(';') {
            // Old form: ADDR;PREFIX;GATEWAY;
            let mut f = v.split(';');
            let (a, p, g) = (f.next(), f.next(), f.next());
            s.add_address(a.and_then(|a| cidr(a, p.and_then(|p| p.trim().parse().ok()))));
            if s.gateway.is_none() {
                s.gateway = g.and_then(ipv4).filter(|g| g != "0.0.0.0");
            }
        } else if numbered("address") || numbered("addresses") {
            let (a, g) = match v.split_once(',') {
                Some((a, g)) => (a, Some(g)),
                None => (*v, None),
            };
            s.add_address(cidr(a, None));
            if s.gateway.is_none() {
                s.gateway = g.and_then(ipv4);
            }
        } else if *k == "gateway" {
            s.gateway = ipv4(v);
        } else if *k == "dns" {
            s.add_dns(v);
        }
    }
    s.nonempty()
}

/// An ifcfg file (`/etc/sysconfig/network-scripts/ifcfg-*`) with a static address:
/// `BOOTPROTO=none|static` (or absent), `IPADDR[N]`, `PREFIX[N]` or `NETMASK[N]`,
/// `GATEWAY`, `DNS1`, `DNS2`... A DHCP file gives `None`.
pub fn ifcfg(text: &str) -> Option<StaticIpv4> {
    let var = |k: &str| crate::edit::shell_var(text, k);
    if let Some(proto) = var("BOOTPROTO") {
        if !matches!(proto.to_ascii_lowercase().as_str(), "none" | "static" | "") {
            return None;
        }
    }
    let mut s = StaticIpv4::default();
    for n in std::iter::once(String::new()).chain((0..MAX_VALUES).map(|i| i.to_string())) {
        let Some(addr) = var(&format!("IPADDR{n}")) else {
            continue;
        };
        let prefix = var(&format!("PREFIX{n}"))
            .and_then(|p| p.trim().parse().ok())
            .or_else(|| var(&format!("NETMASK{n}")).and_then(|m| mask_prefix(&m)));
        s.add_address(cidr(&addr, prefix));
    }
    s.gateway = var("GATEWAY").and_then(|g| ipv4(&g));
    for i in 1..=MAX_VALUES {
        if let Some(d) = var(&format!("DNS{i}")) {
            s.add_dns(&d);
        }
    }
    s.nonempty()
}

/// ifupdown's stanza `iface NAME inet static` in /etc/network/interfaces:
/// `address A[/P]`, `netmask M`, `gateway G`, `dns-nameservers a b`.
pub fn ifupdown(text: &str, name: &str) -> Option<StaticIpv4> {
    let mut s = StaticIpv4::default();
    let mut inside = false;
    let (mut addr, mut mask) = (None, None);
    for l in text.lines().map(str::trim) {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("iface") => {
                let (n, fam, method) = (w.next(), w.next(), w.next());
                inside = n == Some(name) && fam == Some("inet") && method == Some("static");
            }
            Some("auto" | "allow-hotplug" | "mapping" | "source" | "source-directory") => {
                inside = false
            }
            Some("address") if inside => addr = w.next().map(str::to_string),
            Some("netmask") if inside => mask = w.next().and_then(mask_prefix),
            Some("gateway") if inside => s.gateway = w.next().and_then(ipv4),
            Some("dns-nameservers") if inside => s.add_dns(&w.collect::<Vec<_>>().join(" ")),
            _ => {}
        }
    }
    s.add_address(addr.and_then(|a| cidr(&a, mask)));
    s.nonempty()
}

/// A systemd-networkd `.network` file's `[Network]`: `Address=`, `Gateway=`, `DNS=`
/// (a DHCP-only file gives `None`).
pub fn networkd(text: &str) -> Option<StaticIpv4> {
    let mut s = StaticIpv4::default();
    for (k, v) in ini_section(text, "Network")
        .into_iter()
        .chain(ini_section(text, "Address"))
        .chain(ini_section(text, "Route"))
    {
        match k {
            "Address" => s.add_address(cidr(v, None)),
            "Gateway" if s.gateway.is_none() => s.gateway = ipv4(v),
            "DNS" => s.add_dns(v),
            _ => {}
        }
    }
    s.nonempty()
}

/// netplan YAML: `network.ethernets.NAME.addresses`, `gateway4` or a `routes` entry
/// to `default`/`0.0.0.0/0`, `nameservers.addresses`. A file that does not parse, or
/// names no such interface, gives `None`.
pub fn netplan(text: &str, name: &str) -> Option<StaticIpv4> {
    use serde_norway::Value;
    let doc: Value = serde_norway::from_str(text).ok()?;
    let nic = doc.get("network")?.get("ethernets")?.get(name)?;
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_sequence)
            .map(|seq| {
                seq.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .take(MAX_VALUES)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut s = StaticIpv4::default();
    for a in strings(nic.get("addresses")) {
        s.add_address(cidr(&a, None));
    }
    s.gateway = nic.get("gateway4").and_then(Value::as_str).and_then(ipv4);
    if s.gateway.is_none() {
        s.gateway = nic
            .get("routes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|r| {
                matches!(
                    r.get("to").and_then(Value::as_str),
                    Some("default" | "0.0.0.0/0")
                )
            })
            .and_then(|r| r.get("via")?.as_str().and_then(ipv4));
    }
    for d in strings(nic.get("nameservers").and_then(|n| n.get("addresses"))) {
        s.add_dns(&d);
    }
    s.nonempty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(addr: &str, gw: Option<&str>, dns: &[&str]) -> Option<StaticIpv4> {
        Some(StaticIpv4 {
            addresses: vec![addr.into()],
            gateway: gw.map(str::to_string),
            dns: dns.iter().map(|d| d.to_string()).collect(),
        })
    }

    #[test]
    fn a_keyfile_as_anaconda_writes_it() {
        let text = "[connection]\nid=ens192\ntype=ethernet\ninterface-name=ens192\n\n\
                    [ipv4]\naddress1=10.0.2.50/24,10.0.2.2\ndns=10.0.2.3;192.0.2.53;\n\
                    method=manual\n\n[ipv6]\naddress1=2001:db8::5/64\nmethod=manual\n";
        assert_eq!(
            nm_keyfile(text),
            expected(
                "10.0.2.50/24",
                Some("10.0.2.2"),
                &["10.0.2.3", "192.0.2.53"]
            )
        );
    }

    #[test]
    fn keyfile_variants_and_dhcp() {
        // gateway= on its own line, a second address, the old addresses1= form.
        let text = "[ipv4]\nmethod=manual\naddress1=192.0.2.10/24\naddress2=192.0.2.11/24\n\
                    gateway=192.0.2.1\n";
        let s = nm_keyfile(text).unwrap();
        assert_eq!(s.addresses, ["192.0.2.10/24", "192.0.2.11/24"]);
        assert_eq!(s.gateway.as_deref(), Some("192.0.2.1"));
        let old = "[ipv4]\nmethod=manual\naddresses1=192.0.2.20;24;192.0.2.1;\n";
        assert_eq!(
            nm_keyfile(old),
            expected("192.0.2.20/24", Some("192.0.2.1"), &[])
        );
        assert_eq!(nm_keyfile("[ipv4]\nmethod=auto\n"), None);
        // An address outside [ipv4] (here [ipv6]) does not count.
        assert_eq!(
            nm_keyfile("[ipv6]\nmethod=manual\naddress1=10.0.0.1/8\n"),
            None
        );
        // Garbage from the guest is dropped, never carried.
        assert_eq!(
            nm_keyfile("[ipv4]\nmethod=manual\naddress1=10.0.0.300/24\ndns=$(reboot);\n"),
            None
        );
    }

    #[test]
    fn ifcfg_static_with_prefix_or_netmask_and_dhcp() {
        let text = "DEVICE=ens192\nBOOTPROTO=none\nONBOOT=yes\nIPADDR=192.0.2.10\n\
                    PREFIX=24\nGATEWAY=192.0.2.1\nDNS1=192.0.2.53\nDNS2=192.0.2.54\n";
        assert_eq!(
            ifcfg(text),
            expected(
                "192.0.2.10/24",
                Some("192.0.2.1"),
                &["192.0.2.53", "192.0.2.54"]
            )
        );
        let mask = "BOOTPROTO=static\nIPADDR0=\"10.1.2.3\"\nNETMASK0=255.255.0.0\n";
        assert_eq!(ifcfg(mask), expected("10.1.2.3/16", None, &[]));
        assert_eq!(ifcfg("DEVICE=ens192\nBOOTPROTO=dhcp\n"), None);
        // A non-contiguous netmask is not a prefix: the address is dropped.
        assert_eq!(ifcfg("IPADDR=10.1.2.3\nNETMASK=255.0.255.0\n"), None);
    }

    #[test]
    fn ifupdown_static_stanza() {
        let text = "auto lo\niface lo inet loopback\n\nauto ens192\niface ens192 inet static\n\
                    \taddress 192.0.2.10\n\tnetmask 255.255.255.0\n\tgateway 192.0.2.1\n\
                    \tdns-nameservers 192.0.2.53 192.0.2.54\n\niface ens224 inet dhcp\n";
        assert_eq!(
            ifupdown(text, "ens192"),
            expected(
                "192.0.2.10/24",
                Some("192.0.2.1"),
                &["192.0.2.53", "192.0.2.54"]
            )
        );
        assert_eq!(ifupdown(text, "ens224"), None);
        let cidr_form = "iface ens192 inet static\n address 10.0.0.5/8\n";
        assert_eq!(
            ifupdown(cidr_form, "ens192"),
            expected("10.0.0.5/8", None, &[])
        );
    }

    #[test]
    fn networkd_static_and_dhcp() {
        let text = "[Match]\nName=ens192\n\n[Network]\nAddress=192.0.2.10/24\n\
                    Gateway=192.0.2.1\nDNS=192.0.2.53\n";
        assert_eq!(
            networkd(text),
            expected("192.0.2.10/24", Some("192.0.2.1"), &["192.0.2.53"])
        );
        assert_eq!(
            networkd("[Match]\nName=ens192\n[Network]\nDHCP=ipv4\n"),
            None
        );
    }

    /// The file subiquity writes (Ubuntu's server installer): block sequences at the
    /// key's indentation, `search: []`, `renderer` and `version` after `ethernets`; the
    /// ubuntu-shaped-sb fixture carries it.
    #[test]
    fn netplan_as_subiquity_writes_it() {
        let text = "# This is the network config written by 'subiquity'\nnetwork:\n  ethernets:\n\
                    \x20   ens192:\n      addresses:\n      - 10.0.2.50/24\n      nameservers:\n\
                    \x20       addresses:\n        - 10.0.2.3\n        search: []\n      routes:\n\
                    \x20     - to: default\n        via: 10.0.2.2\n    ens224:\n      dhcp4: true\n\
                    \x20 renderer: networkd\n  version: 2\n";
        assert_eq!(
            netplan(text, "ens192"),
            expected("10.0.2.50/24", Some("10.0.2.2"), &["10.0.2.3"])
        );
        assert_eq!(netplan(text, "ens224"), None);
        assert_eq!(
            crate::edit::netplan_ethernets(text),
            vec!["ens192", "ens224"]
        );
    }

    #[test]
    fn netplan_static_and_dhcp_nics() {
        let text = "network:\n  version: 2\n  ethernets:\n    ens192:\n      addresses:\n\
                    \x20       - 192.0.2.10/24\n      routes:\n        - to: default\n\
                    \x20         via: 192.0.2.1\n      nameservers:\n        addresses: [192.0.2.53]\n\
                    \x20   ens224:\n      dhcp4: true\n";
        assert_eq!(
            netplan(text, "ens192"),
            expected("192.0.2.10/24", Some("192.0.2.1"), &["192.0.2.53"])
        );
        assert_eq!(netplan(text, "ens224"), None);
        let old = "network:\n  ethernets:\n    eth0:\n      addresses: [\"10.0.0.5/8\"]\n      gateway4: 10.0.0.1\n";
        assert_eq!(
            netplan(old, "eth0"),
            expected("10.0.0.5/8", Some("10.0.0.1"), &[])
        );
        assert_eq!(netplan("network: [unclosed", "eth0"), None);
    }

    #[test]
    fn netmask_prefixes() {
        assert_eq!(mask_prefix("255.255.255.0"), Some(24));
        assert_eq!(mask_prefix("255.255.255.255"), Some(32));
        assert_eq!(mask_prefix("0.0.0.0"), Some(0));
        assert_eq!(mask_prefix("255.255.0.255"), None);
        assert_eq!(cidr("10.0.0.1/33", None), None);
    }
}

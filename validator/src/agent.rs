//! The report line of the first-boot agent that `v2k inject` installs, read from the
//! serial log: `V2K-AGENT {json}` on one line (format in docs/inject.md).

use serde::{Deserialize, Serialize};

pub use v2k_kvm_target::agent::LINE_PREFIX;

/// Longest agent line accepted; the guest is untrusted and the log is read whole.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentReport {
    #[serde(rename = "v")]
    pub version: u32,
    pub ok: bool,
    pub boot: bool,
    pub root_rw: bool,
    #[serde(default)]
    pub mounts: Vec<AgentMount>,
    #[serde(default)]
    pub nics: Vec<AgentNic>,
    #[serde(default)]
    pub failed_units: Vec<String>,
    #[serde(default)]
    pub uptime: f64,
    /// How the guest was started (agents before this field send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<AgentFirmware>,
    /// Default IPv4 routes.
    #[serde(default)]
    pub gateways: Vec<AgentGateway>,
    /// The resolvers in use.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Each default gateway and whether it answered (`None`: the guest had no tool
    /// to ask it).
    #[serde(default)]
    pub gateway_answers: Vec<(String, Option<bool>)>,
    /// Each resolver in use and whether it answered a DNS query.
    #[serde(default)]
    pub dns_answers: Vec<(String, Option<bool>)>,
    /// The source's enabled services and their state (`active`, `exited`, `skipped`,
    /// `missing`, or systemd's ActiveState).
    #[serde(default)]
    pub services: Vec<(String, String)>,
    /// Performance counters since boot (agents before this field send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<crate::perf::AgentPerf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentMount {
    pub target: String,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentFirmware {
    pub efi: bool,
    /// Secure Boot enforcing; `None` on BIOS.
    #[serde(default)]
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentGateway {
    /// The gateway address (`-` for a device route).
    pub via: String,
    pub dev: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentNic {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Vec<String>,
}

/// Finds the first well-formed agent report in a serial log. Lines that start with
/// the prefix but do not parse are skipped (a half-written line while the guest is
/// still printing is read again on the next poll).
pub fn find_report(log: &str) -> Option<AgentReport> {
    log.lines().find_map(|line| {
        let at = line.find(LINE_PREFIX)?;
        let json = line[at + LINE_PREFIX.len()..].trim();
        if json.len() > MAX_LINE {
            return None;
        }
        serde_json::from_str(json).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_report_among_console_noise() {
        let log = "[  OK  ] Started foo.\r\nV2K-AGENT {\"v\":1,\"ok\":true,\"boot\":true,\"root-rw\":true,\"mounts\":[{\"target\":\"/data\",\"ok\":true}],\"nics\":[{\"name\":\"ens192\",\"mac\":\"00:50:56:aa:bb:cc\",\"ipv4\":[\"10.0.2.15/24\"]}],\"failed-units\":[],\"uptime\":21.4}\r\nlogin:";
        let r = find_report(log).unwrap();
        assert!(r.ok && r.root_rw);
        assert_eq!(r.nics[0].name, "ens192");
        assert_eq!(r.mounts[0].target, "/data");
    }

    #[test]
    fn ignores_a_truncated_line() {
        assert!(find_report("V2K-AGENT {\"v\":1,\"ok\":tr").is_none());
        assert!(find_report("nothing here").is_none());
    }
}
